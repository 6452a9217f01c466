"""The stand-in broker's consumer-group wedge, reproduced without nodes-import.

``python -m tests.soak.broker_wedge [--rounds N] [--leaving K]``: starts the local Tansu broker
(the ``local`` extra), and per round: a topic of 6 partitions, a group of 3 bare
``confluent_kafka`` consumers (all assigned), a 4th member joining (a rebalance begins) and
``K`` of the first three closing at that moment (LeaveGroup during the join); then whether
the members left, and afterwards a fresh member of the same group, are ever assigned a
partition (20 s each). On Tansu 0.6.0 (measured 2026-12-05): with 2 leaving, 3 rounds of 3
wedged (no member of that group is assigned again, while a new group is assigned at once);
with 1 leaving, 1 of 2; with ``--strategy roundrobin`` 2 of 4 (no assignor avoids it:
cooperative-sticky left a half-assigned group in 1 of 2).
This is what stopped two 30-minute soaks (docs/reliability.md): a broker defect, not the
daemons'. Exit 0 when no round wedged, 1 otherwise.
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from collections.abc import Sequence

from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic

from nodes_import.cli.local import LocalBroker

PARTITIONS = 6
SETTLE_S = 8.0  # the first three members assigned
WATCH_S = 20.0  # how long a member is given to be assigned after the leaves


def _pump(members: Sequence[Consumer], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for member in members:
            member.poll(0.05)


def one_round(bootstrap: str, leaving: int, strategy: str) -> bool:
    """True when the group wedged."""
    topic = f"wedge-{uuid.uuid4().hex[:6]}-users"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(10)
    conf = {"bootstrap.servers": bootstrap, "group.id": f"wedge-{uuid.uuid4().hex[:6]}",
            "session.timeout.ms": 6000, "heartbeat.interval.ms": 2000,
            "auto.offset.reset": "earliest", "enable.auto.commit": False,
            "partition.assignment.strategy": strategy}

    def member() -> Consumer:
        consumer = Consumer(conf)
        consumer.subscribe([topic])
        return consumer

    first = [member() for _ in range(3)]
    _pump(first, SETTLE_S)
    before = [len(c.assignment()) for c in first]
    joining = member()
    _pump([*first, joining], 0.7)  # its JoinGroup is in: the rebalance has begun
    closing = [threading.Thread(target=c.close) for c in first[:leaving]]
    for thread in closing:
        thread.start()
    for thread in closing:
        thread.join()
    staying = [*first[leaving:], joining]
    _pump(staying, WATCH_S)
    after = [len(c.assignment()) for c in staying]
    for consumer in staying:
        consumer.close()
    fresh = member()
    _pump([fresh], WATCH_S)
    late = len(fresh.assignment())
    fresh.close()
    print(f"assigned before {before}, after {leaving} left {after}, a fresh member {late}",
          flush=True)
    return sum(after) == 0 and late == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--leaving", type=int, default=2, choices=(1, 2))
    parser.add_argument("--strategy", default="range,roundrobin",
                        help="partition.assignment.strategy (librdkafka's default: range first)")
    args = parser.parse_args(argv)
    broker = LocalBroker()
    bootstrap = broker.start()
    try:
        wedged = sum(one_round(bootstrap, args.leaving, args.strategy) for _ in range(args.rounds))
    finally:
        broker.stop()
    print(f"{wedged} of {args.rounds} rounds wedged")
    return 1 if wedged else 0


if __name__ == "__main__":
    raise SystemExit(main())
