"""The database circuit breaker end to end: a real daemon, broker and PostgreSQL, the
database cut off through the fault proxy while jobs arrive and one runs."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from nodes_import.cli.sample import write_users
from nodes_import.daemon.decisions import INTERRUPTED
from tests.fixtures.daemon import Daemons
from tests.fixtures.faultproxy import FaultProxy, through
from tests.fixtures.http import free_port, request, scrape, total
from tests.fixtures.kafka import KafkaTest, wait_until
from tests.fixtures.postgres import Database
from tests.integration.test_daemon import (
    batches_waiting,
    job_message,
    job_row,
    nodes_locked,
    wait_status,
)

BREAKER = {"failure-threshold": 3, "probe-initial": {"ms": 300}, "probe-max": {"ms": 1000}}
QUEUED = 5  # jobs sent while the database is away
IDS_PER_JOB = 40


def _submitted(events: list[dict[str, object]], job_ids: set[str]) -> list[dict[str, object]]:
    return [e for e in events if e.get("message") == "job submitted" and e.get("jobId") in job_ids]


def test_while_the_database_keeps_failing_no_job_starts_and_all_complete_exactly_after_it_heals(
        daemons: Daemons, kafka: KafkaTest, db: Database, pg_proxy: FaultProxy,
        tmp_path: Path) -> None:
    kafka.create_topic()
    port = free_port()
    daemon = daemons.start(
        database={"dsn": through(pg_proxy, db.dsn), "connect-timeout": {"ms": 2000}},
        admin={"enabled": True, "port": port}, node={"import": {"breaker": BREAKER}})
    wait_until(lambda: request(port, "/readyz").status == 200, 10, "ready")

    # 1. a file job in flight when the database goes away
    users = write_users(tmp_path / "users.csv.gz", 40_000)
    running = str(uuid.uuid4())
    with nodes_locked(db):  # the job mid-batch when the database goes away, on any machine
        kafka.send(job_message("big", file=str(users), job_id=running))
        wait_until(lambda: batches_waiting(db), 30, "the file job's first batch")
        pg_proxy.refuse_for(3600)  # until healed

    # 2. jobs sent during the outage
    queued = {str(uuid.uuid4()) for _ in range(QUEUED)}
    for n, job_id in enumerate(sorted(queued)):
        kafka.send(job_message(f"q{n}", ids=[f"r{k}" for k in range(IDS_PER_JOB)],
                               job_id=job_id))
    wait_until(lambda: total(scrape(port), "node_import_db_circuit_state") == 1, 30,
               "the breaker open")
    ready = request(port, "/readyz")
    assert ready.status == 503 and "circuit breaker open" in ready.body.decode()
    assert db.dsn not in ready.body.decode()
    # Probes fail with backoff; meanwhile nothing starts: no job row, no submission.
    wait_until(lambda: len(daemon.events("database probe failed")) >= 2, 20,
               "two failed probes")
    assert _submitted(daemon.events(), queued) == []
    rows = [job_row(db, j) for j in queued]
    assert all(r is None or r["status"] == "PENDING" for r in rows), rows
    assert total(scrape(port), "kafka_consumer_paused") == 1
    # The file job the outage interrupted is held, not failed: its worker returns it
    # unfinished (not trying to record it FAILED) and the daemon keeps its slot to resume
    # it once the breaker closes.
    def logged(message: str) -> list[dict[str, object]]:
        return [e for e in daemon.events(message) if e.get("jobId") == running]

    wait_until(lambda: logged(INTERRUPTED), 60, "the running job interrupted and held")
    assert logged("job interrupted: the database went away")
    assert total(scrape(port), "node_import_db_circuit_state") == 1
    row = job_row(db, running)
    assert row is not None and row["status"] == "PROCESSING", row
    assert not [e for e in daemon.events("job finished") if e.get("status") == "FAILED"]

    # 3. the database answers again: everything completes, each row once
    pg_proxy.heal()
    healed = time.monotonic()
    for n, job_id in enumerate(sorted(queued)):
        row = wait_status(db, job_id, timeout=60)
        assert (row["total"], row["success"], row["failed"]) == (IDS_PER_JOB, IDS_PER_JOB, 0)
        assert db.scalar("SELECT count(*) FROM nodes WHERE group_id = %s", (f"q{n}",)) \
            == IDS_PER_JOB
    resumed_s = time.monotonic() - healed
    row = wait_status(db, running, timeout=120)
    assert (row["total"], row["success"], row["rows_committed"]) == (40_000, 40_000, 40_000)
    assert db.scalar("SELECT count(*) FROM nodes WHERE group_id = 'big'") == 40_000
    assert db.scalar("SELECT count(*) FROM job_failures") == 0
    wait_until(lambda: request(port, "/readyz").status == 200, 10, "ready again")
    assert total(scrape(port), "node_import_db_circuit_state") == 0
    # no job was dead-lettered for the outage; offsets of all 6 messages committed
    wait_until(lambda: kafka.committed() == {0: QUEUED + 1}, 15, "offsets committed")
    closed = daemon.events("database answers again: jobs start")
    assert closed, daemon.log_text()[-4000:]
    print(f"database healed -> {QUEUED} queued jobs COMPLETED in {resumed_s:.2f}s; "
          f"outage seen by the breaker {closed[-1].get('outageS')}s")
