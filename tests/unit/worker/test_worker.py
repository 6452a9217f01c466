"""The worker side of the process boundary stays free of the Kafka client."""

from __future__ import annotations

import pickle
import subprocess
import sys
from datetime import UTC, datetime

from nodes_import.config import ImportConfig
from nodes_import.jobs import Ending, ImportJob, JobOutcome, JobRow
from nodes_import.worker import WorkerSettings


def test_importing_the_worker_and_the_cli_never_loads_the_kafka_client() -> None:
    code = ("import sys, nodes_import.worker, nodes_import.cli; "
            "print('confluent_kafka' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "False"


def test_what_crosses_the_boundary_pickles_to_an_equal_value() -> None:
    now = datetime.now(UTC)
    row = JobRow(id="j", group_id="g", domain_id="d", status="FAILED", node_type="USER",
                 source="/data/u.csv", total_nodes=1, success_count=0, failed_count=1,
                 inserted_count=0, updated_count=0, unchanged_count=0, rows_committed=1,
                 error="boom", attempts=1, source_bytes=10, bytes_read=10, claimed_by="h:1",
                 created_at=now, updated_at=now, started_at=now, finished_at=now,
                 heartbeat_at=None)
    values = [ImportJob("j", "g", "d", reference_ids=("a", "b"), claimed_by="h:1"),
              ImportConfig(), WorkerSettings("dbname=x", 3, 1.5),
              JobOutcome("j", "FAILED", "boom", row, "X", "trace", ending=Ending.FAILED)]
    for value in values:
        assert pickle.loads(pickle.dumps(value)) == value


def test_a_worker_shows_its_running_call_in_the_shared_table_and_clears_it() -> None:
    import multiprocessing
    import os

    from nodes_import import worker

    table = multiprocessing.get_context("spawn").Array("q", 4)
    table[0] = 999  # another worker's pair
    slot = worker._take_call_slot(table)
    assert slot == 2 and list(table) == [999, 0, os.getpid(), 0]
    full = multiprocessing.get_context("spawn").Array("q", 2)
    full[0] = 999
    assert worker._take_call_slot(full) is None
    saved = worker._calls, worker._call_slot
    worker._calls, worker._call_slot = table, slot
    try:
        with worker._running(7):
            assert table[3] == 7
            with worker._running(0):  # a call from inside the worker: the outer one shows
                assert table[3] == 7
        assert table[3] == 0
        try:
            with worker._running(8):
                raise RuntimeError("the call failed")
        except RuntimeError:
            pass
        assert table[3] == 0
    finally:
        worker._calls, worker._call_slot = saved
