"""The import engine: runs one job from its source to a terminal state (worker side).

Shape of a job (``run_import``):
1. open the source and read its header; a source that cannot be read fails the job
   before a single row is written;
2. mark the job PROCESSING and read its checkpoint (a resumed job skips what it
   already committed);
3. one reader (this thread) parses, validates and encodes batches, splitting each by a
   hash of reference_id into ``max-parallel-futures`` key partitions;
4. one writer thread per partition writes its partition's batches in file order, one
   transaction each, with retries for transient errors; the bounded queues between 3
   and 4 keep memory flat;
5. the job ends COMPLETED, or FAILED with the reason (timeout, too many rejects, the
   database lost, an unreadable file, a cancel: seen in the answer of a batch's counters
   UPDATE, the job stops at that batch boundary with what it committed).

The data path reads in one direction. For each attempt the engine borrows a connection
from the pool (``_connection``) and calls a store function with it and the job, whole:
``retry.attempts`` -> ``_connection`` -> ``batchwrite.write_part(conn, job, part, ...)``
-> ``state.committed``. No store module calls back into the engine, and ``JobState`` is
only the state the threads share.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from nodes_import import metrics, status
from nodes_import.config import ImportConfig
from nodes_import.errors import (
    CANCELLED_MESSAGE,
    ConnectionLostError,
    JobCancelledError,
    JobTimeoutError,
    LeaseLostError,
    NodesImportError,
    PayloadError,
    StorageError,
    TransientStorageError,
    type_name,
)
from nodes_import.jobs import BUNDLE_MAX_IDS, Ending, ImportJob, JobOutcome, JobRow
from nodes_import.pipeline import encode
from nodes_import.pipeline.parse import RawBatch
from nodes_import.pipeline.validate import Rejected
from nodes_import.store import batchwrite, connection, jobrows, retry
from nodes_import.worker import reader
from nodes_import.worker.jobstate import TIMEOUT_MESSAGE, WATCHDOG_GRACE_S, JobState, Progress

__all__ = ["FINISH_PATIENCE", "SMALL_JOB_ROWS", "WATCHDOG_GRACE_S", "Progress", "run_import"]

log = logging.getLogger(__name__)

# Encoded batches waiting per writer: enough to overlap parsing with writing, few enough
# to keep memory at a handful of batches whatever the file size.
QUEUE_DEPTH = 2
# The end of a job is retried this many times as long as a batch write.
FINISH_PATIENCE = 3
# A reference-ID list up to this long is written as one key partition, in one transaction
# with its COMPLETED; longer lists keep max-parallel-futures writers (rows dominate there).
SMALL_JOB_ROWS = BUNDLE_MAX_IDS


@contextmanager
def _connection(state: JobState) -> Iterator[psycopg.Connection[Any]]:
    """A pooled connection for one attempt, its errors as the service's StorageErrors.

    Waits for it no longer than the pool's own timeout (the configured connect timeout)
    nor the job's time left: each retry attempt must fail fast while the database is away.
    """
    timeout_s = max(0.1, min(state.pool.timeout, state.remaining_ms() / 1000.0))
    with connection.wrapped(), state.pool.connection(timeout=timeout_s) as conn:
        yield conn


def _payload_rows(part: encode.EncodedPart, reason: str) -> list[Rejected]:
    """The rows of a payload that could not be written, as failures (rare path)."""
    return [Rejected(n, ref, reason, "") for n, ref in encode.payload_rows(part)]


def _write_part(state: JobState, part: encode.EncodedPart,
                bytes_read: int) -> batchwrite.PartResult:
    """Write one part, each attempt on a connection of its own, transient errors retried.
    Raises ``JobTimeoutError`` once the job is out of time, and what the last attempt
    raised when the attempts ran out."""
    for attempt in retry.attempts(state.cfg.retry, context=state.ctx):
        with attempt:
            remaining = state.remaining_ms()
            if remaining <= 0:
                raise JobTimeoutError(TIMEOUT_MESSAGE)
            timeout_ms = min(state.cfg.batch_timeout_ms, remaining)
            # The server cancels a slow statement itself; the watchdog covers a link that
            # stalls so badly that the cancellation could never arrive.
            with _connection(state) as conn, \
                    connection.watchdog(conn, timeout_ms / 1000.0 + WATCHDOG_GRACE_S):
                result = batchwrite.write_part(
                    conn, state.job, part, columns=state.columns, bytes_read=bytes_read,
                    timeout_ms=timeout_ms, new_id=state.new_id)
    return result


def _write_one(state: JobState, part: encode.EncodedPart, bytes_read: int) -> None:
    """One part from a writer's queue: written, or its rows recorded as failed, or the
    job failed; then counted and logged."""
    job = state.job
    started = time.monotonic()
    failed_kind: str | None = None  # set when the part's rows are recorded as failed
    result: batchwrite.PartResult | None
    try:
        result = _write_part(state, part, bytes_read)
    except TransientStorageError as exc:
        if isinstance(exc, ConnectionLostError) or state.remaining_ms() <= 0:
            state.fail(JobTimeoutError(TIMEOUT_MESSAGE) if state.remaining_ms() <= 0 else exc)
            return
        result = _fail_part(state, part, bytes_read, f"batch failed after retries: {exc}")
        failed_kind = type(exc).__name__
    except (JobTimeoutError, LeaseLostError) as exc:  # fenced: another runner owns the job
        state.fail(exc)
        return
    except StorageError as exc:
        result = _fail_part(state, part, bytes_read, f"batch rejected by the database: {exc}")
        failed_kind = type(exc).__name__
    if result is None:
        return
    state.committed(result.rows, result.failed, bytes_read)
    seconds = time.monotonic() - started
    if failed_kind is None:
        metrics.batch_written(job.group_id, job.domain_id, inserted=result.inserted,
                              updated=result.updated, unchanged=result.unchanged,
                              failed=result.failed, seconds=seconds)
    else:
        metrics.batch_failed(job.group_id, job.domain_id, rows=result.failed, kind=failed_kind)
    log.info("batch committed", extra={"fields": {
        **state.ctx, "partition": part.partition, "batchSize": part.rows + len(part.rejected),
        "inserted": result.inserted, "updated": result.updated, "unchanged": result.unchanged,
        "failed": result.failed, "durationMs": round(seconds * 1000, 1)}})
    if result.cancelled:  # asked in the database (store.cancel): stop here, keep the rest
        log.info("job cancelled; stopping at this batch boundary", extra={"fields": state.ctx})
        state.fail(JobCancelledError(CANCELLED_MESSAGE))


def _fail_part(state: JobState, part: encode.EncodedPart, bytes_read: int,
               reason: str) -> batchwrite.PartResult | None:
    """Count a partition whose write kept failing as failed rows, and go on."""
    rows = part.rejected + _payload_rows(part, reason[:1000])
    try:
        for attempt in retry.attempts(state.cfg.retry, context=state.ctx):
            with attempt, _connection(state) as conn:
                cancelled = batchwrite.fail_rows(conn, state.job, part, rows,
                                                 bytes_read=bytes_read)
    except NodesImportError as exc:
        state.fail(exc)
        return None
    log.error("batch failed; its rows are recorded as failed", extra={"fields": {
        **state.ctx, "partition": part.partition, "rows": len(rows), "error": reason}})
    return batchwrite.PartResult(0, 0, 0, len(rows), cancelled=cancelled)


def _writer(state: JobState, inbox: queue.Queue[tuple[encode.EncodedPart, int] | None]) -> None:
    """A writer thread: its partition's parts, in file order, until the reader's None."""
    while True:
        item = inbox.get()
        if item is None:
            return
        if state.fatal is not None:
            continue  # drain without writing: the job is failing
        try:
            _write_one(state, *item)
        except NodesImportError as exc:
            state.fail(exc)
        except Exception as exc:  # a bug must fail the job, not hang the reader
            log.exception("writer crashed", extra={"fields": state.ctx})
            state.fail(StorageError(f"internal error: {type(exc).__name__}: {exc}"))


def _finish(state: JobState, final: str, error: str | None,
            error_kind: str | None = None, exc: BaseException | None = None) -> JobOutcome:
    """End the job row as ``final`` (fenced on its claimer), then log and count it."""
    job = state.job
    # Recording how a job ended is worth waiting for longer than a batch is: a job left
    # PROCESSING by a database outage is only found again when its lease runs out.
    patient = dataclasses.replace(state.cfg.retry,
                                  max_attempts=state.cfg.retry.max_attempts * FINISH_PATIENCE)
    for attempt in retry.attempts(patient, context=state.ctx):
        with attempt, _connection(state) as conn:
            row = jobrows.finish_job(conn, job_id=job.job_id, status=final, error=error,
                                     owner=job.claimed_by)
    return _ended(state, row, final, error, error_kind, exc)


def _ended(state: JobState, row: JobRow | None, final: str, error: str | None,
           error_kind: str | None = None, exc: BaseException | None = None) -> JobOutcome:
    """Log and count how the job ended (its row as committed, None if gone); the outcome."""
    job = state.job
    if job.claimed_by is not None and (row is None or row.status not in status.TERMINAL):
        # fenced: another daemon took the job over; it records the end, not us
        log.warning("job taken over by another runner; its end is theirs to record",
                    extra={"fields": {**state.ctx,
                                      "claimedBy": None if row is None else row.claimed_by}})
        return JobOutcome(job.job_id, status.PROCESSING, "lease lost", row,
                          ending=Ending.LEASE_LOST)
    duration = round(time.monotonic() - state.progress.started, 3)
    seen = final if row is None else row.status
    fields: dict[str, Any] = {**state.ctx, "status": seen, "durationS": duration,
                              **_counts(row)}
    if error:
        fields["error"] = error
    log.log(logging.ERROR if final == status.FAILED else logging.INFO, "job finished",
            extra={"fields": fields})
    metrics.job_finished(seen, duration, error_kind)
    # The exception that failed the job: the dead letter's class and stack trace headers.
    error_type = None if exc is None else type_name(exc)
    trace = "".join(traceback.format_exception(exc)) if exc is not None else None
    return JobOutcome.ended(job.job_id, row, error, missing=final,
                            error_type=error_type, stack_trace=trace)


def _counts(row: JobRow | None) -> dict[str, int | None]:
    """The counters of the "job finished" line (None each when the row is gone)."""
    if row is None:
        return dict.fromkeys(("total", "success", "failed", "inserted", "updated", "unchanged"))
    return {"total": row.total_nodes, "success": row.success_count, "failed": row.failed_count,
            "inserted": row.inserted_count, "updated": row.updated_count,
            "unchanged": row.unchanged_count}


def _write_small(state: JobState, batch: RawBatch, header: list[str]) -> JobOutcome | None:
    """A job whose whole input is one clean batch in one key partition: its rows, its
    counters and COMPLETED in ONE transaction (one commit instead of two).

    None when the batch does not qualify (rejected rows, limits) or anything fails: the
    transaction then rolled back as a whole, nothing of it is committed, and the normal
    path (writer threads, retries, failed-row accounting, fencing) runs the job.
    """
    job, cfg = state.job, state.cfg
    encode_started = time.monotonic()
    part = encode.encode_batch(batch, header, 1, None, max_field_bytes=cfg.max_field_bytes)[0]
    metrics.batch_encoded(time.monotonic() - encode_started)
    rows_read = batch.table.num_rows + len(batch.invalid)
    timeout_ms = min(cfg.batch_timeout_ms, state.remaining_ms())
    if part.rejected or batch.invalid or not part.rows or rows_read > cfg.max_rows \
            or timeout_ms <= 0 or state.stopping():
        return None
    started = time.monotonic()
    try:
        with _connection(state) as conn, \
                connection.watchdog(conn, timeout_ms / 1000.0 + WATCHDOG_GRACE_S), \
                connection.wrapped(), conn.transaction():
            result = batchwrite.write_part(conn, job, part, columns=state.columns,
                                           bytes_read=batch.bytes_read, timeout_ms=timeout_ms,
                                           new_id=state.new_id)
            if result.cancelled:  # rolled back: the normal path stops at its first batch
                raise JobCancelledError(CANCELLED_MESSAGE)
            row = jobrows.complete_job(conn, job_id=job.job_id, owner=job.claimed_by)
    except NodesImportError as exc:  # rolled back: the normal path decides what it means
        log.info("one-transaction write declined; normal path", extra={"fields": {
            **state.ctx, "error": str(exc)}})
        return None
    with state.lock:
        state.progress.rows_read += rows_read
    state.committed(result.rows, result.failed, batch.bytes_read)
    seconds = time.monotonic() - started
    metrics.batch_written(job.group_id, job.domain_id, inserted=result.inserted,
                          updated=result.updated, unchanged=result.unchanged,
                          failed=result.failed, seconds=seconds)
    log.info("batch committed", extra={"fields": {
        **state.ctx, "partition": 0, "batchSize": part.rows, "inserted": result.inserted,
        "updated": result.updated, "unchanged": result.unchanged, "failed": 0,
        "durationMs": round(seconds * 1000, 1)}})
    return _ended(state, row, status.COMPLETED, None)


def _partitions(job: ImportJob, cfg: ImportConfig) -> int:
    """How many key partitions a new job gets: one for a small reference-ID list (one
    transaction instead of one per partition: a small job's cost is its round trips and
    commits, not its rows), else ``max-parallel-futures``. A resumed job keeps the
    partition count of its stored checkpoint whatever this says (``begin_job``)."""
    if job.reference_ids is not None \
            and len(job.reference_ids) <= min(SMALL_JOB_ROWS, cfg.batch_size):
        return 1
    return cfg.max_parallel_futures


def _begin(state: JobState, *, partitions: int, source_bytes: int | None) -> list[int] | None:
    """Create (if new) and start the job in one transaction; the checkpoint, or None when
    the job is already finished. Also picks the server's id function on that connection."""
    for attempt in retry.attempts(state.cfg.retry, context=state.ctx):
        with attempt, _connection(state) as conn:
            state.new_id = connection.new_id_function(conn)
            checkpoint = jobrows.begin_job(conn, state.job, partitions=partitions,
                                           source_bytes=source_bytes)
    return checkpoint


def _job_row(state: JobState) -> JobRow | None:
    """The job's row as it is now (None if it is gone)."""
    with _connection(state) as conn:
        return jobrows.get_job(conn, state.job.job_id)


def _read_and_write(state: JobState, batches: Iterator[RawBatch], header: list[str],
                    checkpoint: list[int]) -> None:
    """Steps 3 and 4: the reader here, one writer thread per key partition; returns once
    every writer has drained its queue."""
    inboxes: list[queue.Queue[Any]] = [queue.Queue(QUEUE_DEPTH) for _ in checkpoint]
    writers = [threading.Thread(target=_writer, args=(state, box), daemon=True,
                                name=f"writer-{state.job.job_id[:8]}-{n}")
               for n, box in enumerate(inboxes)]
    for thread in writers:
        thread.start()
    try:
        reader.read_all(state, batches, header, checkpoint, inboxes)
    except NodesImportError as exc:
        state.fail(exc)
    finally:
        for box in inboxes:
            box.put(None)
        for thread in writers:
            thread.join()


def _end(state: JobState) -> JobOutcome:
    """Step 5: how the job ended, recorded unless its end is not this runner's to record."""
    job, fatal = state.job, state.fatal
    if isinstance(fatal, LeaseLostError):  # the new owner ends the job, not us
        log.warning("job taken over by another runner; stopped", extra={"fields": {
            **state.ctx, "error": str(fatal)}})
        return JobOutcome(job.job_id, status.PROCESSING, str(fatal), ending=Ending.LEASE_LOST)
    if isinstance(fatal, ConnectionLostError) and not job.fail_on_outage:
        # the daemon resumes it from its checkpoint once the database answers
        log.warning("job interrupted: the database went away", extra={"fields": {
            **state.ctx, "error": str(fatal)}})
        return JobOutcome(job.job_id, status.PROCESSING, str(fatal),
                          error_type=type_name(fatal), ending=Ending.OUTAGE)
    if fatal is not None:
        return _finish(state, status.FAILED, str(fatal), type(fatal).__name__, fatal)
    if state.cancel.is_set():
        log.info("job interrupted; it resumes from its checkpoint", extra={"fields": state.ctx})
        return JobOutcome(job.job_id, status.PROCESSING, None, _job_row(state),
                          ending=Ending.STOPPED)
    return _finish(state, status.COMPLETED, None)


def run_import(job: ImportJob, cfg: ImportConfig, pool: ConnectionPool, *,
               on_progress: Callable[[Progress], None] | None = None,
               cancel: threading.Event | None = None) -> JobOutcome:
    """Run ``job`` to COMPLETED or FAILED (or leave it PROCESSING if ``cancel`` is set)."""
    state = JobState(job, cfg, pool, on_progress, cancel)
    # 1. the source: unreadable means FAILED before anything is written
    try:
        batches, header, size = reader.open_batches(state)
    except PayloadError as exc:
        _begin(state, partitions=1, source_bytes=None)
        return _finish(state, status.FAILED, str(exc), type(exc).__name__, exc)
    state.progress.source_bytes = size
    state.columns = encode.staged_columns(header)
    # 2. the job row (created if new) PROCESSING, and where a previous attempt stopped
    checkpoint = _begin(state, partitions=_partitions(job, cfg), source_bytes=size)
    if checkpoint is None:
        row = _job_row(state)
        log.info("job already finished; skipped", extra={"fields": state.ctx})
        cancelled = row is not None and row.status == status.FAILED \
            and row.cancel_requested_at is not None
        return JobOutcome.ended(job.job_id, row, None if row is None else row.error,
                                missing=status.FAILED, error_type=type_name(
                                    JobCancelledError()) if cancelled else None)
    resume_from = checkpoint if any(checkpoint) else None
    log.info("job started", extra={"fields": {**state.ctx, "source": job.source_label,
                                              "partitions": len(checkpoint),
                                              "resumeFrom": resume_from}})
    metrics.job_started()
    # 3./4. a small job in one transaction; else the reader here, one writer per partition
    if len(checkpoint) == 1 and not any(checkpoint) and job.reference_ids is not None:
        first = next(batches, None)
        if first is not None:
            outcome = _write_small(state, first, header)
            if outcome is not None:
                return outcome
            batches = itertools.chain([first], batches)
    _read_and_write(state, batches, header, checkpoint)
    # 5. the end
    return _end(state)
