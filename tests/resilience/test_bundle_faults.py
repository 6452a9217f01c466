"""Bundles of small jobs while the database link is cut again and again: every job ends
COMPLETED, each row counted once (a bundle rolled back runs its jobs one by one; one whose
COMMIT went through but whose answer was lost is found finished, not written again)."""

from __future__ import annotations

import threading
import uuid

from tests.fixtures.daemon import Daemons
from tests.fixtures.faultproxy import FaultProxy, through
from tests.fixtures.kafka import KafkaTest, wait_until
from tests.fixtures.postgres import Database
from tests.integration.test_daemon import job_message

JOBS = 150
IDS = 5


def test_small_jobs_in_bundles_survive_repeated_cuts_with_exact_counts(
        daemons: Daemons, kafka: KafkaTest, db: Database, pg_proxy: FaultProxy) -> None:
    kafka.create_topic(partitions=4)
    daemon = daemons.start(
        database={"dsn": through(pg_proxy, db.dsn), "connect-timeout": {"ms": 2000}},
        node={"import": {"executor": {"queue-capacity": 100}}})
    jobs = [str(uuid.uuid4()) for _ in range(JOBS)]
    stop = threading.Event()

    def cut_while_sending() -> None:  # every ~30 ms while the burst goes through
        while not stop.wait(0.03):
            pg_proxy.cut_all()

    cutter = threading.Thread(target=cut_while_sending, daemon=True)
    for n, job in enumerate(jobs):
        kafka.send(job_message(f"c{n}", ids=[f"r{k}" for k in range(IDS)], job_id=job),
                   partition=n % 4, flush=False)
        if n == 10:
            kafka.flush()
            cutter.start()
    kafka.flush()
    # The cuts go on until they have made bundles fail (each then runs its jobs one by one)
    # or every job is over: not for a guessed time, which a slow start could outlast.
    declined = "bundle declined; its jobs run one by one"
    wait_until(lambda: daemon.events(declined) or db.scalar(
        "SELECT count(*) FROM job_status WHERE status IN ('COMPLETED', 'FAILED')") == JOBS,
        120, "bundles cut and declined")
    stop.set()
    cutter.join()
    wait_until(lambda: db.scalar("SELECT count(*) FROM job_status WHERE status IN"
                                 " ('COMPLETED', 'FAILED')") == JOBS, 120, "every job finished")
    rows = db.query("SELECT group_id, status, total_nodes, success_count, failed_count,"
                    " inserted_count + updated_count + unchanged_count, rows_committed"
                    " FROM job_status")
    assert {r[1:] for r in rows} == {("COMPLETED", IDS, IDS, 0, IDS, IDS)}, rows
    assert db.scalar("SELECT count(*) FROM nodes") == JOBS * IDS
    assert db.scalar("SELECT count(DISTINCT group_id) FROM nodes") == JOBS
    assert db.scalar("SELECT count(*) FROM job_failures") == 0
    # The cuts did reach the bundles: some were declined and ran one by one.
    assert daemon.events(declined)
    wait_until(lambda: sum(kafka.committed(partitions=4).values()) == JOBS, 20,
               "every offset committed")
