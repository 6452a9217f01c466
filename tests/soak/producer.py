"""The producer: sends the plan's messages on time and keeps the oracle.

It starts chains, odd messages and late redeliveries at their planned times, and sends a
chain's next step once every job of the previous step is terminal (read from job_status
on a direct connection, not through the fault proxy). Each step is applied to its
group's expected state when it is sent, so the oracle holds exactly what was sent. Every
message carries a ``soak-seq`` header: the checker reads the topic back and knows each
message (and any copy the broker may hold twice).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from nodes_import import status
from tests.soak.cluster import PRODUCER, TOPIC, Cluster, drop
from tests.soak.stream import (
    Chain,
    ChainBuilder,
    GroupState,
    Odd,
    Plan,
    Step,
    message_value,
)

SEQ_HEADER = "soak-seq"
THINK_S = 0.5  # pause between a step's end and the chain's next step


class StreamProducer:
    """Sends ``plan`` against ``cluster`` until ``stop`` (no new step after it)."""

    def __init__(self, cluster: Cluster, plan: Plan, t0: float) -> None:
        self.cluster, self.plan, self.t0 = cluster, plan, t0
        self.producer = Producer({"bootstrap.servers": cluster.broker.bootstrap, **PRODUCER})
        self.groups: dict[int, GroupState] = {}
        self.chains: dict[int, Chain] = {}
        self.odds: list[Odd] = []
        self.redeliveries: list[tuple[float, str]] = []  # (t, seq of the message sent again)
        self.active: dict[int, int] = {}  # chain number -> index of its step under way
        self.ready_at: dict[int, float] = {}  # chain number -> when its next step may go
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.sent_messages = 0
        self.sent_jobs: set[str] = set()
        self._thread = threading.Thread(target=self._run, name="soak-producer", daemon=True)
        self._conn: Any = None

    def now(self) -> float:
        return time.monotonic() - self.t0

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self.stop.set()
        self._thread.join(120)
        self.producer.flush(60)
        del self.producer  # its connections close now, while the broker still answers
        drop(self._conn)

    # -- sending
    def _send(self, value: bytes | None, key: bytes | None, seq: str,
              sent: list[tuple[int, int]]) -> None:
        """Produce one message and wait for its acknowledgement (records where it went)."""
        def delivered(err: Any, msg: Any) -> None:
            if err is not None:
                self.errors.append(f"{seq}: {err}")
            else:
                sent.append((int(msg.partition()), int(msg.offset())))

        while True:
            try:
                self.producer.produce(TOPIC, value=value, key=key,
                                      headers=[(SEQ_HEADER, seq.encode())], on_delivery=delivered)
                break
            except BufferError:
                self.producer.poll(0.1)
        self.producer.flush(300)
        self.sent_messages += 1

    def _send_step(self, chain: Chain, step: Step) -> None:
        assert step.content is not None
        if step.content.is_file:
            path = self.cluster.files / f"{chain.group}.{step.index}.csv.gz"
            step.content.write_csv(path)
            step.file = str(path)
        step.rows, step.is_file = step.content.rows, step.content.is_file
        step.bad_rows = step.content.bad_rows()
        group = self.groups.setdefault(chain.number, GroupState(chain.group, chain.domain))
        step.expected = group.apply(step.content)
        step.sent_at = self.now()
        for message in step.messages:
            value = message.value = message_value(chain, step, message)
            for _ in range(message.copies):
                self._send(value, chain.group.encode(), message.seq, message.sent)
        self.sent_jobs.update(step.job_ids)
        step.content = None  # the oracle keeps the group state; the rows may go

    def _start_chain(self, chain: Chain) -> None:
        chain.steps = ChainBuilder(chain, self.plan.rates).build()
        self.chains[chain.number] = chain
        self._send_step(chain, chain.steps[0])
        self.active[chain.number] = 0

    def _send_odd(self, odd: Odd) -> None:
        self.odds.append(odd)
        self._send(odd.value, None, odd.seq, odd.sent)
        if odd.job_id is not None:
            self.sent_jobs.add(odd.job_id)

    def _redeliver(self, number: int) -> None:
        chain = self.chains.get(number)
        if chain is None or not chain.steps:
            return
        message = chain.steps[0].messages[0]
        if message.job_id is None or message.value is None:
            return  # a message without jobId sent again is a new job, not a redelivery
        self._send(message.value, chain.group.encode(), message.seq, message.sent)
        self.redeliveries.append((self.now(), message.seq))

    # -- the loop
    def _terminal(self, job_ids: set[str]) -> bool | None:
        """All these jobs are COMPLETED/FAILED (None: the database did not answer)."""
        try:
            if self._conn is None or self._conn.closed:
                self._conn = self.cluster.pg.connect()
            rows = self._conn.execute(
                "SELECT count(*) FROM job_status WHERE id = ANY(%s::uuid[]) AND status = ANY(%s)",
                (list(job_ids), list(status.TERMINAL))).fetchone()
            return bool(rows and rows[0] == len(job_ids))
        except Exception:
            drop(self._conn)
            self._conn = None
            return None

    def _advance_chains(self) -> None:
        for number, index in list(self.active.items()):
            chain = self.chains[number]
            step = chain.steps[index]
            if not step.job_ids:
                continue
            done = self._terminal(step.job_ids)
            if done is None:
                return
            if not done:
                continue
            if index + 1 >= len(chain.steps):
                del self.active[number]
                continue
            ready = self.ready_at.setdefault(number, self.now() + THINK_S)
            if self.now() >= ready and not self.stop.is_set():
                self.ready_at.pop(number, None)
                self._send_step(chain, chain.steps[index + 1])
                self.active[number] = index + 1

    def _run(self) -> None:
        events = iter(self.plan.events)
        event = next(events, None)
        last_check = 0.0
        while not self.stop.is_set():
            while event is not None and event.at <= self.now() and not self.stop.is_set():
                if event.chain is not None:
                    self._start_chain(event.chain)
                elif event.odd is not None:
                    self._send_odd(event.odd)
                elif event.redeliver is not None:
                    self._redeliver(event.redeliver)
                event = next(events, None)
            if self.now() - last_check >= 0.5:
                last_check = self.now()
                self._advance_chains()
            self.stop.wait(0.1)

    # -- for the report
    def steps(self) -> list[tuple[Chain, Step]]:
        """Every step that was sent."""
        return [(c, s) for c in self.chains.values() for s in c.steps if s.sent_at is not None]


def files_total(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.csv.gz"))
