"""The job's reader (worker/reader.py) without a database: what it hands the writers and
when it stops."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from typing import Any, cast

from nodes_import.config import ImportConfig
from nodes_import.errors import JobTimeoutError
from nodes_import.jobs import ImportJob
from nodes_import.pipeline.parse import REFERENCE_ID, RawBatch, id_list_batches
from nodes_import.worker import reader
from nodes_import.worker.jobstate import TIMEOUT_MESSAGE, JobState

IDS = tuple(f"ref-{n}" for n in range(1000))


def _state() -> JobState:
    job = ImportJob("j", "g", "3f1c1a3e-2b9d-4c55-9a57-0d3c6a1f0b21", reference_ids=IDS)
    return JobState(job, ImportConfig(batch_size=100), cast(Any, None), None, None)


def test_the_reader_stops_at_the_first_batch_read_after_the_global_timeout() -> None:
    state = _state()
    pulled: list[int] = []

    def batches() -> Iterator[RawBatch]:
        for n, batch in enumerate(id_list_batches(IDS, 100), start=1):
            if n == 3:  # the job's time ran out while batch 3 was read
                state.deadline = time.monotonic() - 1
            pulled.append(n)
            yield batch

    inbox: queue.Queue[Any] = queue.Queue()  # unbounded: never full, never waited on
    reader.read_all(state, batches(), [REFERENCE_ID], [0], [inbox])
    assert isinstance(state.fatal, JobTimeoutError)
    assert str(state.fatal) == TIMEOUT_MESSAGE
    assert pulled == [1, 2, 3]  # nothing read past the deadline
    handed = [inbox.get_nowait()[0] for _ in range(inbox.qsize())]
    assert [part.rows for part in handed] == [100, 100]  # batch 3 never reaches a writer


def test_the_reader_hands_every_batch_over_when_no_limit_is_passed() -> None:
    state = _state()
    inbox: queue.Queue[Any] = queue.Queue()
    reader.read_all(state, id_list_batches(IDS, 100), [REFERENCE_ID], [0], [inbox])
    assert state.fatal is None
    assert sum(inbox.get_nowait()[0].rows for _ in range(inbox.qsize())) == 1000
    assert state.progress.rows_read == 1000
