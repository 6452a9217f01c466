"""The reader of one job (worker side): its source, as batches, into each key
partition's queue. Touches no database: the engine's writer threads do.

1. ``open_batches``: the source opened and its header read (an inline list of reference
   IDs needs neither); a source that cannot be read raises ``PayloadError``;
2. ``read_all``, per batch: parse, validate and encode it, split by a hash of
   reference_id into one part per key partition (``encode.encode_batch``);
3. check the job's limits (time, rows, reference IDs, reject ratio): a limit passed fails
   the job (``state.fail``) and stops the reading;
4. put each part on its partition's bounded queue, waiting while it is full: the writers
   set the pace, so memory stays at a handful of batches whatever the file size.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from typing import Any

from nodes_import import metrics
from nodes_import.config import ImportConfig
from nodes_import.errors import JobRejectedError, JobTimeoutError, NodesImportError, PayloadError
from nodes_import.jobs import ImportJob
from nodes_import.pipeline import encode
from nodes_import.pipeline.parse import (
    REFERENCE_ID,
    CsvReader,
    IdFileReader,
    RawBatch,
    id_list_batches,
)
from nodes_import.pipeline.source import Source
from nodes_import.worker.jobstate import TIMEOUT_MESSAGE, JobState


def open_batches(state: JobState) -> tuple[Iterator[RawBatch], list[str], int | None]:
    """The job's batches, its header and its source's size (None: an inline ID list)."""
    return open_source(state.job, state.cfg)


def open_source(job: ImportJob, cfg: ImportConfig) -> tuple[Iterator[RawBatch], list[str],
                                                            int | None]:
    """``open_batches`` for any caller (``import --dry-run`` too): no job state needed."""
    if job.reference_ids is not None:
        if len(job.reference_ids) > cfg.max_reference_ids:
            raise PayloadError(f"{len(job.reference_ids)} reference IDs, over "
                               f"node.import.max-reference-ids ({cfg.max_reference_ids})")
        return id_list_batches(job.reference_ids, cfg.batch_size), [REFERENCE_ID], None
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


def read_all(state: JobState, batches: Iterator[RawBatch], header: list[str],
              checkpoint: list[int], inboxes: list[queue.Queue[Any]]) -> None:
    """Encode each batch, check the job's limits, hand each key partition's part to its
    writer's queue (rows at or below the partition's checkpoint skipped); returns when
    the source is read, the job is stopping, or it failed here (``state.fail``)."""
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
        passed = limit_passed(state.job, state.cfg, rows_read, rejected)
        if passed is not None:
            state.fail(passed)
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


def limit_passed(job: ImportJob, cfg: ImportConfig, rows_read: int,
                 rejected: int) -> NodesImportError | None:
    """The error of the first row limit the job passed after ``rows_read`` rows of which
    ``rejected`` were rejected (None: within them): reference IDs of a file, rows, the
    reject ratio."""
    if job.reference_ids_file is not None and rows_read > cfg.max_reference_ids:
        return PayloadError(f"more than node.import.max-reference-ids "
                            f"({cfg.max_reference_ids}) reference IDs")
    if rows_read > cfg.max_rows:
        return PayloadError(f"more than node.import.max-rows ({cfg.max_rows}) rows")
    if rows_read and rejected / rows_read > cfg.max_reject_ratio:
        return JobRejectedError(f"{rejected} of {rows_read} rows rejected, over "
                                f"node.import.max-reject-ratio ({cfg.max_reject_ratio})")
    return None
