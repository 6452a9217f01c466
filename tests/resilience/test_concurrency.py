"""Several jobs writing overlapping reference IDs of one group at the same time."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from nodes_import.config import ImportConfig, RetryConfig
from nodes_import.jobs import ImportJob, new_job_id
from nodes_import.worker import engine
from tests.fixtures.postgres import Database

DOMAIN = "3f1c1a3e-2b9d-4c55-9a57-0d3c6a1f0b21"
JOBS = 4
KEYS = 6000


@pytest.mark.slow
def test_overlapping_jobs_neither_deadlock_nor_lose_rows(db: Database, tmp_path: Path) -> None:
    # Every job writes every key, each in its own shuffled order, with its own value.
    paths = []
    for j in range(JOBS):
        keys = list(range(KEYS))
        keys = keys[j * 997 % KEYS:] + keys[: j * 997 % KEYS]
        if j % 2:
            keys.reverse()
        path = tmp_path / f"job{j}.csv"
        path.write_text("reference_id,writer\n" + "".join(f"k{k},job{j}\n" for k in keys))
        paths.append(path)
    cfg = ImportConfig(batch_size=500, max_parallel_futures=2, allowed_roots=(str(tmp_path),),
                       retry=RetryConfig(max_attempts=8, initial_interval_ms=20,
                                         multiplier=2.0, max_interval_ms=200))
    jobs = [ImportJob(new_job_id(), "shared", DOMAIN, source=str(p)) for p in paths]
    outcomes: list = [None] * JOBS
    barrier = threading.Barrier(JOBS)

    def run(n: int) -> None:
        barrier.wait()
        outcomes[n] = engine.run_import(jobs[n], cfg, db.pool)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(JOBS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert all(o is not None and o.status == "COMPLETED" for o in outcomes), outcomes
    rows = db.query("SELECT to_jsonb(j) FROM job_status j")
    for (row,) in rows:
        assert (row["total_nodes"], row["success_count"], row["failed_count"]) == (KEYS, KEYS, 0)
    # every key exists once, with one node id, and carries one job's value: the state of
    # some serial order of the batch transactions
    assert db.scalar("SELECT count(*) FROM nodes WHERE group_id = 'shared'") == KEYS
    assert db.scalar("SELECT count(*) FROM node_metadata") == KEYS
    writers = {r[0] for r in db.query("SELECT DISTINCT metadata->>'writer' FROM node_metadata")}
    assert writers <= {f"job{j}" for j in range(JOBS)}
    inserted = sum(r[0]["inserted_count"] for r in rows)
    assert inserted == KEYS  # each key inserted by exactly one job, updated by the others
