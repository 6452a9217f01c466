"""A dry run (``import --dry-run``): a job's source read and validated by the import's own
pipeline, with no database and nothing written: what the import would count.

1. open the source as the job would (``reader.open_source``: allowed roots, sizes, GZIP,
   the header); a file that cannot be read ends the run as it would fail the job;
2. this thread parses the batches (the import's reader); a ``dry-run-check`` thread runs
   on each the checks the import makes before writing (``encode.validate_batch``: widths,
   UTF-8, blank or over-long values, NUL bytes, over-large fields): the rows it would
   reject, with the same reasons. Arrow's kernels release the GIL, so the checks of one
   batch overlap the parsing of the next: with no database to leave a core to, a dry run
   uses two;
3. the job's row limits (``reader.limit_passed``: rows, reference IDs, the reject ratio)
   after each batch: the first one passed ends the run, as it would end the job FAILED;
4. the valid rows' keys, split by a hash of the key into ``BUCKETS`` (a key always lands
   in the same one; split by the checking threads), counted distinct per bucket at the
   end, two buckets at a time: how many distinct keys the file holds, and how many rows
   repeat a key seen before (the import applies both; the last occurrence wins).

Memory: a few batches, plus the keys: the buckets hold their keys as read (~20 bytes a
key) until one has more than its share of ``COMPACT_EVERY`` new ones; it then keeps only
its distinct ones.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from nodes_import.config import ImportConfig
from nodes_import.errors import NodesImportError, type_name
from nodes_import.jobs import ImportJob
from nodes_import.pipeline import encode
from nodes_import.pipeline.parse import RawBatch
from nodes_import.pipeline.validate import Rejected
from nodes_import.worker import reader

# Rejected rows a dry run shows (the first ones, by row number).
SHOWN_REJECTS = 20
# Key buckets, counted distinct in parallel at the end. Many small hash tables beat one
# big one (measured, 5M shuffled keys: one table 1.4-1.9 s of CPU, 64 buckets 0.5 s, the
# split by hash 0.26 s done beside the parsing).
BUCKETS = 64
# Keys held as read, over all buckets, before a bucket keeps only its distinct ones.
COMPACT_EVERY = 8_000_000
# Threads that check batches (and count the buckets at the end): the parser is a third.
CHECKERS = 2
# Batches checked ahead of the parser at most (bounds the memory to a few batches).
CHECK_AHEAD = 2


@dataclass
class DryRun:
    """What an import of the source would count. ``error``: why it would end FAILED
    (None: it would complete)."""

    source: str
    rows: int = 0  # data rows read
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    distinct_keys: int = 0
    first_rejected: list[Rejected] = field(default_factory=list)
    error: str | None = None
    error_type: str | None = None
    columns: list[str] = field(default_factory=list)
    source_bytes: int | None = None
    seconds: float = 0.0

    @property
    def valid(self) -> int:
        """Rows the import would write."""
        return self.rows - self.rejected

    @property
    def duplicate_keys(self) -> int:
        """Valid rows whose key came earlier in the file (the last occurrence wins)."""
        return self.valid - self.distinct_keys

    @property
    def would_complete(self) -> bool:
        """The import would end COMPLETED (possibly with rejected rows)."""
        return self.error is None


class _Bucket:
    """The keys of one bucket: as read, compacted to the distinct ones when many pile up."""

    def __init__(self) -> None:
        self.parts: list[pa.Array] = []
        self.distinct = 0  # keys in parts[0] after the last compaction (all distinct)
        self.added = 0  # keys added since

    def add(self, keys: pa.Array) -> None:
        self.parts.append(keys)
        self.added += len(keys)
        # geometric: every key is hashed a bounded number of times, however big the file
        if self.added > max(COMPACT_EVERY // BUCKETS, self.distinct):
            self.parts = [self.unique()]
            self.distinct, self.added = len(self.parts[0]), 0

    def unique(self) -> pa.Array:
        if not self.parts:
            return pa.array([], pa.string())
        merged: pa.Array = pc.unique(pa.chunked_array(self.parts, self.parts[0].type))
        return merged


@dataclass(frozen=True)
class _Checked:
    """One batch's checks, as the ``dry-run-check`` thread returns them."""

    rows: int
    rejected: list[Rejected]
    keys: list[tuple[int, pa.Array]]  # the valid rows' keys: (bucket, its keys)


def _split(keys: pa.Array) -> list[tuple[int, pa.Array]]:
    """``keys`` by bucket (a hash of the key: ``encode.partition_of``): sorted by bucket
    once, then sliced (one gather, where a filter per bucket would scan them all)."""
    if not len(keys):
        return []
    bucket = encode.partition_of(keys, BUCKETS)
    ordered = keys.take(pc.array_sort_indices(bucket))
    counts = pc.value_counts(bucket)
    sizes = dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(),
                     strict=True))
    out, offset = [], 0
    for n in sorted(sizes):
        out.append((int(n), ordered.slice(offset, sizes[n])))
        offset += sizes[n]
    return out


def _check(batch: RawBatch, max_field_bytes: int) -> _Checked:
    validated = encode.validate_batch(batch, max_field_bytes)
    return _Checked(batch.table.num_rows + len(batch.invalid), validated.rejected,
                    _split(validated.keys))


class _Tally:
    """The run's counts, fed one checked batch at a time, in file order."""

    def __init__(self, job: ImportJob, cfg: ImportConfig, report: DryRun, shown: int) -> None:
        self.job, self.cfg, self.report, self.shown = job, cfg, report, shown
        self.buckets = [_Bucket() for _ in range(BUCKETS)]

    def add(self, checked: _Checked) -> None:
        """Count a batch; raise the error of a row limit it passed."""
        report = self.report
        report.rows += checked.rows
        report.rejected += len(checked.rejected)
        report.reasons.update(r.reason for r in checked.rejected)
        room = self.shown - len(report.first_rejected)
        if room > 0:
            report.first_rejected += checked.rejected[:room]
        for n, keys in checked.keys:
            self.buckets[n].add(keys)
        passed = reader.limit_passed(self.job, self.cfg, report.rows, report.rejected)
        if passed is not None:
            raise passed

    def distinct(self, pool: ThreadPoolExecutor) -> int:
        """Distinct keys over the buckets, counted in parallel (no key is in two)."""
        return sum(len(u) for u in pool.map(_Bucket.unique, self.buckets))


def dry_run(job: ImportJob, cfg: ImportConfig, *, shown: int = SHOWN_REJECTS) -> DryRun:
    """Read and validate ``job``'s whole source as its import would; write nothing."""
    started = time.monotonic()
    report = DryRun(source=job.source or job.reference_ids_file or "reference-ids")
    tally = _Tally(job, cfg, report, shown)
    with ThreadPoolExecutor(CHECKERS, thread_name_prefix="dry-run-check") as pool:
        pending: deque[Future[_Checked]] = deque()
        try:
            batches, header, size = reader.open_source(job, cfg)
            report.columns, report.source_bytes = header, size
            for batch in batches:
                pending.append(pool.submit(_check, batch, cfg.max_field_bytes))
                while len(pending) > CHECK_AHEAD or (pending and pending[0].done()):
                    tally.add(pending.popleft().result())
            while pending:
                tally.add(pending.popleft().result())
        except NodesImportError as exc:
            report.error, report.error_type = str(exc), type_name(exc)
            for future in pending:
                future.cancel()
        report.distinct_keys = tally.distinct(pool)
    report.seconds = time.monotonic() - started
    return report
