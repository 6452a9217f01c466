"""The import engine: runs one job from its source to a terminal state (worker side).

Shape of a job (``run_import``):
1. open the source and read its header; a source that cannot be read fails the job
   before a single row is written;
2. mark the job PROCESSING and read its checkpoint (a resumed job skips what it
   already committed);
3. one reader (this thread) parses, validates and encodes batches, splitting each by a
   hash of reference_id into ``max-parallel-futures`` key partitions;
4. one writer thread per partition, each on its own pooled connection, writes its
   partition's batches in file order, one transaction each, with retries for transient
   errors; the bounded queues between 3 and 4 keep memory flat;
5. the job ends COMPLETED, or FAILED with the reason (timeout, too many rejects, the
   database lost, an unreadable file).
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
from typing import Any

from psycopg_pool import ConnectionPool

from nodes_import import metrics, status
from nodes_import.config import ImportConfig
from nodes_import.errors import (
    ConnectionLostError,
    JobRejectedError,
    JobTimeoutError,
    LeaseLostError,
    NodesImportError,
    PayloadError,
    StorageError,
    TransientStorageError,
    type_name,
)
from nodes_import.jobs import BUNDLE_MAX_IDS, Ending, ImportJob, JobOutcome
from nodes_import.pipeline import encode
from nodes_import.pipeline.parse import CsvReader, IdFileReader, RawBatch, id_list_batches
from nodes_import.pipeline.source import Source
from nodes_import.store import batchwrite, connection, jobrows, retry
from nodes_import.worker.jobstate import (
    QUEUE_DEPTH,
    TIMEOUT_MESSAGE,
    WATCHDOG_GRACE_S,
    JobState,
    Progress,
    with_conn,
)

log = logging.getLogger(__name__)

# The end of a job is retried this many times as long as a batch write.
FINISH_PATIENCE = 3
# A reference-ID list up to this long is written as one key partition, in one transaction
# with its COMPLETED; longer lists keep max-parallel-futures writers (rows dominate there).
SMALL_JOB_ROWS = BUNDLE_MAX_IDS


def _payload_rows(part: encode.EncodedPart, reason: str) -> list[encode.Rejected]:
    """The rows of a payload that could not be written, as failures (rare path)."""
    return [encode.Rejected(n, ref, reason, "") for n, ref in encode.payload_rows(part)]


def _write_one(state: JobState, part: encode.EncodedPart, bytes_read: int) -> None:
    job = state.job
    started = time.monotonic()

    def attempt() -> batchwrite.PartResult:
        remaining = state.remaining_ms()
        if remaining <= 0:
            raise JobTimeoutError(TIMEOUT_MESSAGE)
        timeout_ms = min(state.cfg.batch_timeout_ms, remaining)

        def write(conn: Any) -> batchwrite.PartResult:
            # The server cancels a slow statement itself; the watchdog covers a link that
            # stalls so badly that the cancellation could never arrive.
            with connection.watchdog(conn, timeout_ms / 1000.0 + WATCHDOG_GRACE_S):
                return batchwrite.write_part(
                    conn, job_id=job.job_id, group_id=job.group_id, domain_id=job.domain_id,
                    default_type=job.node_type, columns=state.columns, part=part,
                    bytes_read=bytes_read, timeout_ms=timeout_ms, new_id=state.new_id,
                    owner=job.claimed_by)

        return with_conn(state, write)

    failed_kind: str | None = None  # set when the part's rows are recorded as failed
    try:
        result = retry.call(state.cfg.retry, attempt, context=state.ctx)
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
    state.committed(result, bytes_read)
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


def _fail_part(state: JobState, part: encode.EncodedPart, bytes_read: int,
               reason: str) -> batchwrite.PartResult | None:
    """Count a partition whose write kept failing as failed rows, and go on."""
    rows = part.rejected + _payload_rows(part, reason[:1000])
    try:
        retry.call(state.cfg.retry, lambda: with_conn(state, lambda conn: batchwrite.fail_rows(
            conn, job_id=state.job.job_id, part=part, rejected=rows, bytes_read=bytes_read,
            owner=state.job.claimed_by)),
            context=state.ctx)
    except NodesImportError as exc:
        state.fail(exc)
        return None
    log.error("batch failed; its rows are recorded as failed", extra={"fields": {
        **state.ctx, "partition": part.partition, "rows": len(rows), "error": reason}})
    return batchwrite.PartResult(0, 0, 0, len(rows))


def _writer(state: JobState, inbox: queue.Queue[tuple[encode.EncodedPart, int] | None]) -> None:
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


def _open_batches(state: JobState) -> tuple[Iterator[RawBatch], list[str], int | None]:
    job, cfg = state.job, state.cfg
    if job.reference_ids is not None:
        if len(job.reference_ids) > cfg.max_reference_ids:
            raise PayloadError(f"{len(job.reference_ids)} reference IDs, over "
                               f"node.import.max-reference-ids ({cfg.max_reference_ids})")
        return id_list_batches(job.reference_ids, cfg.batch_size), [encode.REFERENCE_ID], None
    uri = job.source or job.reference_ids_file
    if uri is None:
        raise PayloadError("the job has neither a file nor reference IDs")
    source = Source(uri, allowed_roots=cfg.allowed_roots, max_file_bytes=cfg.max_file_bytes,
                    max_decompressed_bytes=cfg.max_decompressed_bytes, remote=cfg.remote)
    reader: CsvReader | IdFileReader
    if job.source is not None:
        reader = CsvReader(source, block_size=cfg.block_size_bytes, batch_size=cfg.batch_size,
                           max_columns=cfg.max_columns)
    else:
        reader = IdFileReader(source, block_size=cfg.block_size_bytes, batch_size=cfg.batch_size)
    return reader.batches(), reader.header, source.info.size


def _read_all(state: JobState, batches: Iterator[RawBatch], header: list[str],
              checkpoint: list[int], inboxes: list[queue.Queue[Any]]) -> None:
    partitions = len(inboxes)
    rejected = 0
    skip: list[int] | None = checkpoint if any(checkpoint) else None
    for batch in batches:
        if state.stopping():
            return
        if state.remaining_ms() <= 0:
            state.fail(JobTimeoutError(TIMEOUT_MESSAGE))
            return
        encode_started = time.monotonic()
        parts = encode.encode_batch(batch, header, partitions, skip,
                                    max_field_bytes=state.cfg.max_field_bytes)
        metrics.batch_encoded(time.monotonic() - encode_started)
        if skip is not None and len(batch.row_numbers) and \
                batch.row_numbers[-1].as_py() > max(skip):
            skip = None  # past every partition's checkpoint: stop filtering
        with state.lock:
            state.progress.rows_read += batch.table.num_rows + len(batch.invalid)
            state.progress.bytes_read = max(state.progress.bytes_read, batch.bytes_read)
            rows_read = state.progress.rows_read
        rejected += sum(len(p.rejected) for p in parts)
        if state.job.reference_ids_file is not None and rows_read > state.cfg.max_reference_ids:
            state.fail(PayloadError(f"more than node.import.max-reference-ids "
                                    f"({state.cfg.max_reference_ids}) reference IDs"))
            return
        if rows_read > state.cfg.max_rows:
            state.fail(PayloadError(f"more than node.import.max-rows ({state.cfg.max_rows}) rows"))
            return
        if rows_read and rejected / rows_read > state.cfg.max_reject_ratio:
            state.fail(JobRejectedError(
                f"{rejected} of {rows_read} rows rejected, over "
                f"node.import.max-reject-ratio ({state.cfg.max_reject_ratio})"))
            return
        for part in parts:
            if part.rows or part.rejected:
                while not state.stopping():
                    try:
                        inboxes[part.partition].put((part, batch.bytes_read), timeout=0.2)
                        break
                    except queue.Full:
                        if state.remaining_ms() <= 0:
                            state.fail(JobTimeoutError(TIMEOUT_MESSAGE))


def _finish(state: JobState, final: str, error: str | None,
            error_kind: str | None = None, exc: BaseException | None = None) -> JobOutcome:
    job = state.job
    # Recording how a job ended is worth waiting for longer than a batch is: a job left
    # PROCESSING by a database outage is only found again when its lease runs out.
    patient = dataclasses.replace(state.cfg.retry,
                                  max_attempts=state.cfg.retry.max_attempts * FINISH_PATIENCE)
    row = retry.call(patient, lambda: with_conn(
        state, lambda conn: jobrows.finish_job(conn, job_id=job.job_id, status=final,
                                               error=error, owner=job.claimed_by)),
        context=state.ctx)
    return _ended(state, row or {}, final, error, error_kind, exc)


def _ended(state: JobState, row: dict[str, Any], final: str, error: str | None,
           error_kind: str | None = None, exc: BaseException | None = None) -> JobOutcome:
    """Log and count how the job ended (its row as committed); the outcome."""
    job = state.job
    if job.claimed_by is not None and row.get("status") not in status.TERMINAL:
        # fenced: another daemon took the job over; it records the end, not us
        log.warning("job taken over by another runner; its end is theirs to record",
                    extra={"fields": {**state.ctx, "claimedBy": row.get("claimed_by")}})
        return JobOutcome(job.job_id, status.PROCESSING, "lease lost", row,
                          ending=Ending.LEASE_LOST)
    duration = round(time.monotonic() - state.progress.started, 3)
    fields = {**state.ctx, "status": row.get("status", final), "durationS": duration,
              "total": row.get("total_nodes"), "success": row.get("success_count"),
              "failed": row.get("failed_count"), "inserted": row.get("inserted_count"),
              "updated": row.get("updated_count"), "unchanged": row.get("unchanged_count")}
    if error:
        fields["error"] = error
    log.log(logging.ERROR if final == status.FAILED else logging.INFO, "job finished",
            extra={"fields": fields})
    metrics.job_finished(str(row.get("status", final)), duration, error_kind)
    # The exception that failed the job: the dead letter's class and stack trace headers.
    error_type = None if exc is None else type_name(exc)
    trace = "".join(traceback.format_exception(exc)) if exc is not None else None
    return JobOutcome.ended(job.job_id, {"status": final, **row}, error,
                            error_type=error_type, stack_trace=trace)


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

    def write(conn: Any) -> tuple[batchwrite.PartResult, dict[str, Any]]:
        with connection.watchdog(conn, timeout_ms / 1000.0 + WATCHDOG_GRACE_S), \
                connection.wrapped(), conn.transaction():
            result = batchwrite.write_part(
                conn, job_id=job.job_id, group_id=job.group_id, domain_id=job.domain_id,
                default_type=job.node_type, columns=state.columns, part=part,
                bytes_read=batch.bytes_read, timeout_ms=timeout_ms, new_id=state.new_id,
                owner=job.claimed_by)
            row = jobrows.complete_job(conn, job_id=job.job_id, owner=job.claimed_by)
        return result, row

    try:
        result, row = with_conn(state, write)
    except NodesImportError as exc:  # rolled back: the normal path decides what it means
        log.info("one-transaction write declined; normal path", extra={"fields": {
            **state.ctx, "error": str(exc)}})
        return None
    with state.lock:
        state.progress.rows_read += rows_read
    state.committed(result, batch.bytes_read)
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
    job = state.job

    def begin(conn: Any) -> list[int] | None:
        state.new_id = connection.new_id_function(conn)
        return jobrows.begin_job(
            conn, job_id=job.job_id, group_id=job.group_id, domain_id=job.domain_id,
            node_type=job.node_type, source=job.source_label, partitions=partitions,
            source_bytes=source_bytes, claimed_by=job.claimed_by,
            resume_failed=job.resume_failed)

    result: list[int] | None = retry.call(state.cfg.retry, lambda: with_conn(state, begin),
                                          context=state.ctx)
    return result


def run_import(job: ImportJob, cfg: ImportConfig, pool: ConnectionPool, *,
               on_progress: Callable[[Progress], None] | None = None,
               cancel: threading.Event | None = None) -> JobOutcome:
    """Run ``job`` to COMPLETED or FAILED (or leave it PROCESSING if ``cancel`` is set)."""
    state = JobState(job, cfg, pool, on_progress, cancel)
    # 1. the source: unreadable means FAILED before anything is written
    try:
        batches, header, size = _open_batches(state)
    except PayloadError as exc:
        _begin(state, partitions=1, source_bytes=None)
        return _finish(state, status.FAILED, str(exc), type(exc).__name__, exc)
    state.progress.source_bytes = size
    state.columns = encode.staged_columns(header)
    # 2. the job row (created if new) PROCESSING, and where a previous attempt stopped
    checkpoint = _begin(state, partitions=_partitions(job, cfg), source_bytes=size)
    if checkpoint is None:
        row = with_conn(state, lambda conn: jobrows.get_job(conn, job.job_id)) or {}
        log.info("job already finished; skipped", extra={"fields": state.ctx})
        return JobOutcome.ended(job.job_id, row, row.get("error"))
    log.info("job started", extra={"fields": {**state.ctx, "source": job.source_label,
                                              "partitions": len(checkpoint),
                                              "resumeFrom": checkpoint if any(checkpoint) else None}})
    metrics.job_started()
    # 3./4. a small job in one transaction; else the reader here, one writer per partition
    if len(checkpoint) == 1 and not any(checkpoint) and job.reference_ids is not None:
        first = next(batches, None)
        if first is not None:
            outcome = _write_small(state, first, header)
            if outcome is not None:
                return outcome
            batches = itertools.chain([first], batches)
    inboxes: list[queue.Queue[Any]] = [queue.Queue(QUEUE_DEPTH) for _ in checkpoint]
    writers = [threading.Thread(target=_writer, args=(state, box), daemon=True,
                                name=f"writer-{job.job_id[:8]}-{n}")
               for n, box in enumerate(inboxes)]
    for thread in writers:
        thread.start()
    try:
        _read_all(state, batches, header, checkpoint, inboxes)
    except PayloadError as exc:
        state.fail(exc)
    except NodesImportError as exc:
        state.fail(exc)
    finally:
        for box in inboxes:
            box.put(None)
        for thread in writers:
            thread.join()
    # 5. the end
    if isinstance(state.fatal, LeaseLostError):  # the new owner ends the job, not us
        log.warning("job taken over by another runner; stopped", extra={"fields": {
            **state.ctx, "error": str(state.fatal)}})
        return JobOutcome(job.job_id, status.PROCESSING, str(state.fatal), {},
                          ending=Ending.LEASE_LOST)
    if isinstance(state.fatal, ConnectionLostError) and not job.fail_on_outage:
        # the daemon resumes it from its checkpoint once the database answers
        log.warning("job interrupted: the database went away", extra={"fields": {
            **state.ctx, "error": str(state.fatal)}})
        return JobOutcome(job.job_id, status.PROCESSING, str(state.fatal), {},
                          error_type=type_name(state.fatal), ending=Ending.OUTAGE)
    if state.fatal is not None:
        return _finish(state, status.FAILED, str(state.fatal), type(state.fatal).__name__,
                       state.fatal)
    if state.cancel.is_set():
        log.info("job interrupted; it resumes from its checkpoint", extra={"fields": state.ctx})
        row = with_conn(state, lambda conn: jobrows.get_job(conn, job.job_id)) or {}
        return JobOutcome(job.job_id, status.PROCESSING, None, row, ending=Ending.STOPPED)
    return _finish(state, status.COMPLETED, None)
