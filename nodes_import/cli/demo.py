"""``nodes-import demo``: the whole story on embedded parts, end to end.

1. start the embedded PostgreSQL and a local Tansu broker;
2. start the daemon (in this process, on a thread) and wait until it has subscribed;
3. write a sample GZIP CSV and a reference-ID list, submit both as Kafka messages;
4. wait until both jobs are terminal, print their summaries and the node counts;
5. stop the daemon (the same stop order as SIGTERM), then the broker.
"""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from nodes_import import status
from nodes_import.cli import sample
from nodes_import.cli.local import local_services
from nodes_import.config import Config
from nodes_import.daemon.service import Daemon
from nodes_import.errors import NodesImportError
from nodes_import.jobs import JobRow, new_job_id
from nodes_import.kafka.clients import client_settings
from nodes_import.kafka.payload import NodeExchange
from nodes_import.kafka.producer import Publisher, submit
from nodes_import.store import connection, jobrows

DEMO_ROWS = 20_000
DEMO_IDS = 5_000
DEMO_DOMAIN = "00000000-0000-4000-8000-00000000d3e0"
DEMO_TOPIC = "demo-users"
JOB_TIMEOUT_S = 300.0


def run_demo(cfg: Config, echo: Callable[[str], None],
             summary: Callable[[JobRow], str]) -> bool:
    """Run the demo; True when both jobs COMPLETED with the expected counts."""
    group = f"demo-{uuid.uuid4().hex[:8]}"  # a fresh group: counts are this run's alone
    with tempfile.TemporaryDirectory(prefix="nodes-import-demo-") as folder, \
            local_services(cfg, quiet=False) as local:
        dsn, bootstrap = local.database.dsn or "", local.kafka.bootstrap_servers or ""
        # 1./2.
        # No admin API: the demo must not fail because a real daemon holds its port.
        local = replace(local, operations=replace(local.operations, admin_enabled=False))
        daemon = Daemon(local, log_level="WARNING")
        thread = threading.Thread(target=daemon.run, name="daemon", daemon=True)
        thread.start()
        try:
            if not daemon.ready.wait(60) or not thread.is_alive():
                raise NodesImportError("the daemon did not start")
            echo(f"daemon running on {bootstrap} (topic {DEMO_TOPIC}, group {group})")
            # 3.
            users = sample.write_users(Path(folder) / "users.csv.gz", DEMO_ROWS)
            ids = [sample.reference_id(DEMO_ROWS + n) for n in range(DEMO_IDS)]
            jobs = [NodeExchange(group, DEMO_DOMAIN, file=str(users), job_id=new_job_id()),
                    NodeExchange(group, DEMO_DOMAIN, reference_ids=tuple(ids),
                                 job_id=new_job_id())]
            publisher = Publisher(client_settings(local.kafka, "producer"))
            try:
                for request in jobs:
                    submit(publisher, DEMO_TOPIC, request)
                    echo(f"submitted job {request.job_id}")
            finally:
                publisher.close()
            # 4.
            rows = _wait_for(dsn, [j.job_id or "" for j in jobs], thread)
        finally:
            # 5.
            daemon.request_stop()
            thread.join(120)
        for row in rows:
            echo(summary(row))
        nodes = _count(dsn, group)
        echo(f"nodes in group {group}: {nodes:,} (expected {DEMO_ROWS + DEMO_IDS:,})")
    return all(r.status == status.COMPLETED for r in rows) and nodes == DEMO_ROWS + DEMO_IDS


def _wait_for(dsn: str, job_ids: list[str], thread: threading.Thread) -> list[JobRow]:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    pool = connection.open_pool(dsn, max_size=1)
    try:
        while time.monotonic() < deadline and thread.is_alive():
            with pool.connection() as conn:
                rows = [jobrows.get_job(conn, j) for j in job_ids]
            if all(r is not None and r.status in status.TERMINAL for r in rows):
                return [r for r in rows if r is not None]
            time.sleep(0.2)
    finally:
        pool.close()
    raise NodesImportError("the demo jobs did not finish in time")


def _count(dsn: str, group: str) -> int:
    pool = connection.open_pool(dsn, max_size=1)
    try:
        with pool.connection() as conn:
            row = conn.execute("SELECT count(*) FROM nodes WHERE group_id = %s",
                               (group,)).fetchone()
            conn.rollback()
    finally:
        pool.close()
    return int(row[0]) if row else 0
