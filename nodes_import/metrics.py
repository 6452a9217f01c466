"""Every Prometheus metric of nodes-import, declared once (``SPECS``), created lazily.

Names follow Prometheus' conventions, as Micrometer's Prometheus registry renders the
seed's names: the application prefix ``node_import_`` on every family (the consumer's
``kafka_consumer_*`` keep the seed's names), base units in the name (``_seconds``), a
0-1 ``_ratio`` rather than a percentage, and ``_total`` on counters (added by the client
to the family name declared here). ``Spec.seed`` keeps the name the seed (and releases
before issue 13) used: ``renames`` lists the difference for the upgrade note. Every
labelled series whose label values are known in advance (``Spec.known``: row outcomes,
job statuses, dead-letter stages, error kinds, the consumer errors we name) is created
at 0 with its instrument, in every process, so ``rate()`` and dashboards see it before
the first event; in multiprocess mode that zero is written to the process's file.

Where each one is recorded:

- worker side (``engine``, ``retry``): batches, rows by outcome, durations, retries and
  job events; several worker processes write them at once;
- parent side (``daemon``, ``consumer``): Kafka messages, consumer errors, dead letters,
  purged jobs;
- scrape side: gauges computed when ``/metrics`` is read (``ScrapeCollector``): the
  daemon's window and pool, consumer lag, the running jobs' progress and the oldest
  running job's age, read from the daemon and from ``job_status``. Nothing per job is
  ever written to a file, so a finished job's series simply disappear.

Multiprocess mode: prometheus_client picks its value class (in-memory or mmap files)
when ``prometheus_client.values`` is first imported, from ``PROMETHEUS_MULTIPROC_DIR``.
``setup_multiprocess`` is therefore called by the daemon before any metric exists; the
spawned workers inherit the variable. Without it (the one-shot ``import``), metrics are
plain in-process values nobody scrapes. Nothing here runs at import: prometheus_client
itself is imported on first use.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from nodes_import import errors, status

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own switch
DIR_PREFIX = "nodes-import-metrics-"  # private directories: DIR_PREFIX + "<pid>-<random>"

# Bucket edges in seconds, from what we measured here (2 cores, PostgreSQL on the same
# machine): one partition of a 50k-row batch commits in ~0.5-3 s alone and 3-5 s with
# two jobs competing (120 s is the statement timeout); a small job ends in 50-500 ms,
# a big one in minutes (3600 s is the global timeout); encoding a 50k-row batch takes
# ~0.3-0.5 s alone and up to ~2.5 s while the writers and the database hold both cores.
BATCH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5,
                 10.0, 15.0, 30.0, 60.0, 120.0)
JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
               1200.0, 1800.0, 3600.0)
ENCODE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

JOB_LABELS = ("group", "domain")  # the seed's tags; switchable off (``configure``)

# Label values known in advance: their series exist (at 0) from start-up.
ROW_OUTCOMES = ("inserted", "updated", "unchanged", "failed")
JOB_ENDINGS = (status.COMPLETED, status.FAILED)
# The dead-letter stages (kafka.payload.STAGE_PARSE/_VALIDATE, kafka.deadletter.STAGE_*):
# named here because metrics sits below kafka/; a test keeps the two lists equal.
DLQ_STAGES = ("parse", "validate", "backpressure", "import")
# Error kinds: the class names of the one exception tree (``errors``). Classes raised
# elsewhere (a driver's error, a private subclass) still get their series when they occur.
ERROR_KINDS = tuple(sorted(
    cls.__name__ for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, errors.NodesImportError)
    and cls is not errors.NodesImportError))
# Consumer error codes: ours (a refused commit) and librdkafka's usual transient ones
# (``KafkaError.name()``); any other code gets its series when it first occurs.
CONSUMER_ERROR_CODES = ("COMMIT_FAILED", "_TRANSPORT", "_ALL_BROKERS_DOWN", "_RESOLVE",
                        "_TIMED_OUT", "_AUTHENTICATION", "_SSL", "_MAX_POLL_EXCEEDED")


@dataclass(frozen=True)
class Spec:
    """One metric: its exported family name, type, meaning, label names, (histograms)
    buckets, where it is recorded, the values of its one label known in advance, and the
    seed's name for it when that differs (the upgrade note's mapping)."""

    name: str  # counters: without ``_total``, which prometheus_client adds to the samples
    kind: str  # counter | histogram | gauge
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    side: str = "worker"  # worker | parent | scrape (computed when /metrics is read)
    known: tuple[str, ...] = ()  # values of the one label exported at 0 from start-up
    seed: str = ""  # the seed's (and releases before issue 13) family name; "" = ``name``

    @property
    def samples(self) -> tuple[str, ...]:
        """The sample names a scrape shows for this family."""
        return _samples(self.name, self.kind)

    @property
    def seed_samples(self) -> tuple[str, ...]:
        """The sample names the seed's name showed (before issue 13)."""
        return _samples(self.seed or self.name, self.kind)


def _samples(name: str, kind: str) -> tuple[str, ...]:
    if kind == "counter":
        return (name + "_total",)
    if kind == "histogram":
        return tuple(name + part for part in ("_bucket", "_sum", "_count"))
    return (name,)


SPECS: tuple[Spec, ...] = (
    # -- Kafka (parent)
    Spec("kafka_consumer_messages_received", "counter",
         "Job messages polled from Kafka.", ("topic",), side="parent"),
    Spec("kafka_consumer_messages_processed", "counter",
         "Job messages done (job terminal or message dead-lettered): their offsets may be "
         "committed.", ("topic",), side="parent"),
    Spec("kafka_consumer_errors", "counter",
         "Consumer errors reported by librdkafka, and failed offset commits.", ("code",),
         side="parent", known=CONSUMER_ERROR_CODES),
    Spec("node_import_dlq_messages_produced", "counter",
         "Dead letters acknowledged by the broker, by stage (parse, validate, backpressure, "
         "import).", ("stage",), side="parent", known=DLQ_STAGES,
         seed="kafka_dlq_messages_produced"),
    Spec("kafka_consumer_lag", "gauge",
         "Messages not yet done per assigned partition: high watermark minus committed "
         "offset.", ("topic", "partition"), side="scrape"),
    Spec("kafka_consumer_paused", "gauge",
         "1 while the consumer is paused because the in-flight window is full.", side="scrape"),
    Spec("node_import_db_circuit_state", "gauge",
         "The daemon's database circuit breaker: 0 closed (jobs start), 1 open (the "
         "database keeps failing: no job starts, consumption paused), 2 half-open "
         "(probing).", side="scrape"),
    # -- jobs and batches (worker)
    Spec("node_import_jobs_started", "counter", "Jobs that started (or resumed) importing."),
    Spec("node_import_jobs_completed", "counter", "Jobs that ended COMPLETED."),
    Spec("node_import_jobs_failed", "counter", "Jobs that ended FAILED."),
    Spec("node_import_batch_duration_seconds", "histogram",
         "Seconds to write one batch partition (COPY, upsert, counters; retries included).",
         buckets=BATCH_BUCKETS, seed="node_import_batch_duration"),
    Spec("node_import_batches_processed", "counter", "Batch partitions committed."),
    Spec("node_import_batch_failures", "counter",
         "Batch partitions whose write kept failing; their rows were recorded as failed."),
    Spec("node_import_total_duration_seconds", "histogram",
         "Seconds from a job's start to its end (per run; a resumed job starts again).",
         ("status",), buckets=JOB_BUCKETS, known=JOB_ENDINGS,
         seed="node_import_total_duration"),
    Spec("node_import_metadata_duration_seconds", "histogram",
         "Seconds to validate a batch and encode its rows and metadata JSON for COPY.",
         buckets=ENCODE_BUCKETS, seed="node_import_metadata_duration"),
    Spec("node_import_success", "counter",
         "Rows imported (inserted, updated or unchanged).", JOB_LABELS),
    Spec("node_import_failures", "counter",
         "Rows rejected (a job_failures row each).", JOB_LABELS),
    Spec("node_import_conflict_updates", "counter",
         "Rows that updated an existing node (same reference_id and group)."),
    Spec("node_import_rows", "counter",
         "Rows by outcome: inserted, updated, unchanged, failed.", ("outcome",),
         known=ROW_OUTCOMES),
    Spec("node_import_errors", "counter",
         "Errors that failed a job or a batch, by exception class.", ("kind",),
         known=ERROR_KINDS),
    Spec("node_import_retries", "counter",
         "Retries of a database operation after a transient error."),
    Spec("node_import_jobs_purged", "counter",
         "Finished jobs deleted by housekeeping (with their job_failures rows).", side="parent"),
    # -- the daemon's window and pool (scrape)
    Spec("node_import_executor_queue_size", "gauge",
         "Jobs in the in-flight window not running on a worker (to start, queued for a "
         "worker, or waiting for a dead letter).", side="scrape", seed="executor_queue_size"),
    Spec("node_import_executor_active_threads", "gauge",
         "Worker processes busy with a job.", side="scrape", seed="executor_active_threads"),
    Spec("node_import_executor_max_workers", "gauge",
         "Worker processes in the pool (node.import.executor.max-pool-size).", side="scrape",
         seed="executor_max_workers"),
    Spec("node_import_jobs_in_flight", "gauge",
         "Messages taken and not done (the window; at most queue-capacity).", side="scrape"),
    # -- job_status (scrape)
    Spec("node_import_job_progress_ratio", "gauge",
         "Compressed bytes read / file size (0-1) of each PROCESSING job this daemon runs "
         "(file jobs only).", ("job_id",), side="scrape", seed="job_progress_percentage"),
    Spec("node_import_oldest_running_job_age_seconds", "gauge",
         "Age since first start of the oldest PROCESSING job in the database (any daemon); "
         "0 when none runs.", side="scrape"),
)
BY_NAME: dict[str, Spec] = {spec.name: spec for spec in SPECS}

_lock = threading.Lock()
_instruments: dict[str, Any] | None = None
_registry: Any = None  # the in-process registry (single-process mode)
_job_labels = {"group": True, "domain": True}
_owned_dir: str | None = None  # a directory setup_multiprocess created, removed on cleanup


def configure(*, group: bool = True, domain: bool = True) -> None:
    """Switch the group/domain labels on or off (off: the label is empty, one series)."""
    _job_labels.update(group=group, domain=domain)


def exported_names() -> set[str]:
    """Every sample name a scrape can show (counters' ``_total``, histograms' parts)."""
    return {name for spec in SPECS for name in spec.samples}


def renames() -> list[tuple[str, str]]:
    """(seed sample name, exported sample name) of every sample issue 13 renamed: the
    upgrade note's mapping. The progress gauge also changed scale (percent -> 0-1)."""
    return [(old, new) for spec in SPECS if spec.seed
            for old, new in zip(spec.seed_samples, spec.samples, strict=True)]


# ------------------------------------------------------------------ multiprocess mode


def setup_multiprocess(directory: str | None = None) -> str:
    """Give this process and its future children a fresh metrics directory; return it.

    Must run before any metric is recorded. ``directory`` is emptied of old ``.db``
    files (a previous run's pids would be counted again), so two daemons must never
    share one; ``None`` makes a private one in the temp dir, after removing those of
    daemons that died without cleaning up (SIGKILL, a crash).
    """
    global _owned_dir, _instruments
    if directory:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        for old in path.glob("*.db"):
            old.unlink()
    else:
        _sweep_dead(Path(tempfile.gettempdir()))
        path = Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-"))
        _owned_dir = str(path)
    # Written (not read) here: prometheus_client and the spawned workers read it.
    os.environ[MULTIPROC_ENV] = str(path)
    from prometheus_client import values

    values.ValueClass = values.get_value_class()  # in case it was imported before
    with _lock:
        _instruments = None
    return str(path)


def _sweep_dead(parent: Path) -> None:
    """Remove private metrics directories whose daemon process is gone."""
    for old in parent.glob(DIR_PREFIX + "*"):
        pid = old.name.removeprefix(DIR_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def cleanup_multiprocess(directory: str) -> None:
    """Remove the metrics files of this run (the directory too if ours). Idempotent."""
    global _owned_dir
    if _owned_dir == directory:
        shutil.rmtree(directory, ignore_errors=True)
        _owned_dir = None
    else:
        for old in Path(directory).glob("*.db"):
            old.unlink(missing_ok=True)


def multiprocess_dir() -> str | None:
    """The metrics directory of this process, if multiprocess mode is on."""
    return os.environ.get(MULTIPROC_ENV) or None


# ------------------------------------------------------------------ the instruments


def _build() -> dict[str, Any]:
    global _registry
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    _registry = CollectorRegistry(auto_describe=True)
    built: dict[str, Any] = {}
    for spec in SPECS:
        if spec.side == "scrape":
            continue
        if spec.kind == "counter":
            built[spec.name] = Counter(spec.name, spec.help, spec.labels, registry=_registry)
        elif spec.kind == "histogram":
            built[spec.name] = Histogram(spec.name, spec.help, spec.labels,
                                         registry=_registry, buckets=spec.buckets)
        else:
            built[spec.name] = Gauge(spec.name, spec.help, spec.labels, registry=_registry,
                                     multiprocess_mode="livesum")
        for value in spec.known:  # the series exists at 0 before its first event
            built[spec.name].labels(value)
    return built


class _Unrecorded:
    """Stands in for every instrument where nothing can ever read them (``disable``)."""

    def labels(self, **_labels: str) -> _Unrecorded:
        return self

    def inc(self, _amount: float = 1) -> None:
        pass

    def dec(self, _amount: float = 1) -> None:
        pass

    def set(self, _value: float) -> None:
        pass

    def observe(self, _value: float) -> None:
        pass


def disable() -> None:
    """No metrics in this process: for the one-off CLI commands, which expose no /metrics
    endpoint. Saves importing prometheus_client (~45 ms of a CLI import's start-up)."""
    global _instruments
    with _lock:
        _instruments = {spec.name: _Unrecorded() for spec in SPECS}


def prepare() -> None:
    """Build every instrument now (importing prometheus_client: ~30 ms), at a process's
    start-up rather than inside its first job, whose latency it would add to."""
    _get(SPECS[0].name)


def _get(name: str) -> Any:
    global _instruments
    if _instruments is None:
        with _lock:
            if _instruments is None:
                _instruments = _build()
    return _instruments[name]


def _job(group: str, domain: str) -> dict[str, str]:
    return {"group": group if _job_labels["group"] else "",
            "domain": domain if _job_labels["domain"] else ""}


# worker side


def batch_encoded(seconds: float) -> None:
    """One batch validated and encoded for COPY."""
    _get("node_import_metadata_duration_seconds").observe(seconds)


def batch_written(group: str, domain: str, *, inserted: int, updated: int, unchanged: int,
                  failed: int, seconds: float) -> None:
    """One batch partition committed, with what its rows did."""
    _get("node_import_batch_duration_seconds").observe(seconds)
    _get("node_import_batches_processed").inc()
    _rows(group, domain, inserted=inserted, updated=updated, unchanged=unchanged, failed=failed)


def batch_failed(group: str, domain: str, *, rows: int, kind: str) -> None:
    """A batch partition kept failing: its rows were recorded as failed."""
    _get("node_import_batch_failures").inc()
    _get("node_import_errors").labels(kind=kind).inc()
    _rows(group, domain, inserted=0, updated=0, unchanged=0, failed=rows)


def _rows(group: str, domain: str, *, inserted: int, updated: int, unchanged: int,
          failed: int) -> None:
    labels = _job(group, domain)
    if inserted + updated + unchanged:
        _get("node_import_success").labels(**labels).inc(inserted + updated + unchanged)
    if failed:
        _get("node_import_failures").labels(**labels).inc(failed)
    if updated:
        _get("node_import_conflict_updates").inc(updated)
    rows = _get("node_import_rows")
    for outcome, count in zip(ROW_OUTCOMES, (inserted, updated, unchanged, failed),
                              strict=True):
        if count:
            rows.labels(outcome=outcome).inc(count)


def job_started() -> None:
    """A job started (or resumed) importing."""
    _get("node_import_jobs_started").inc()


def job_finished(status: str, seconds: float, error_kind: str | None = None) -> None:
    """A job ended COMPLETED or FAILED (``error_kind``: the failing exception class)."""
    name = "node_import_jobs_completed" if status == "COMPLETED" else "node_import_jobs_failed"
    _get(name).inc()
    _get("node_import_total_duration_seconds").labels(status=status).observe(seconds)
    if error_kind:
        _get("node_import_errors").labels(kind=error_kind).inc()


def retry_attempt() -> None:
    """A transient database error is about to be retried."""
    _get("node_import_retries").inc()


# parent side


def message_received(topic: str) -> None:
    """A job message was polled."""
    _get("kafka_consumer_messages_received").labels(topic=topic).inc()


def message_processed(topic: str) -> None:
    """A job message is done (its offset may be committed)."""
    _get("kafka_consumer_messages_processed").labels(topic=topic).inc()


def consumer_error(code: str) -> None:
    """librdkafka reported an error, or a commit failed."""
    _get("kafka_consumer_errors").labels(code=code).inc()


def dead_letter_produced(stage: str) -> None:
    """A dead letter was acknowledged."""
    _get("node_import_dlq_messages_produced").labels(stage=stage).inc()


def jobs_purged(count: int) -> None:
    """Housekeeping deleted ``count`` finished jobs."""
    if count:
        _get("node_import_jobs_purged").inc(count)


# ------------------------------------------------------------------ scrape time


@dataclass
class Scrape:
    """Values computed at scrape time: plain gauges, and the labelled ones."""

    gauges: dict[str, float] = field(default_factory=dict)
    lag: dict[tuple[str, int], int] = field(default_factory=dict)
    progress: dict[str, float] = field(default_factory=dict)  # job_id -> percent (0-100)


class ScrapeCollector:
    """A prometheus_client collector that turns ``Scrape`` snapshots into gauges.

    ``sources`` are called on every scrape (in the HTTP thread); each fills in the part
    it knows. A failing source is skipped, so one slow dependency never hides the rest.
    """

    def __init__(self, sources: Iterable[Callable[[Scrape], None]],
                 on_error: Callable[[BaseException], None] | None = None) -> None:
        self.sources = list(sources)
        self.on_error = on_error

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        snap = Scrape()
        for source in self.sources:
            try:
                source(snap)
            except Exception as exc:
                if self.on_error is not None:
                    self.on_error(exc)
        for name, value in snap.gauges.items():
            spec = BY_NAME.get(name)
            if spec is None:  # a source naming a gauge SPECS lacks: a bug, reported, skipped
                if self.on_error is not None:
                    self.on_error(KeyError(f"gauge {name!r} is not declared in SPECS"))
                continue
            yield GaugeMetricFamily(name, spec.help, value=value)
        lag = GaugeMetricFamily("kafka_consumer_lag", BY_NAME["kafka_consumer_lag"].help,
                                labels=("topic", "partition"))
        for (topic, partition), value in sorted(snap.lag.items()):
            lag.add_metric((topic, str(partition)), value)
        yield lag
        spec = BY_NAME["node_import_job_progress_ratio"]
        progress = GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)
        for job_id, percent in sorted(snap.progress.items()):
            progress.add_metric((job_id,), round(percent / 100.0, 4))  # exported as 0-1
        yield progress


def registry(extra: Iterable[Any] = ()) -> Any:
    """The registry ``/metrics`` serves: every process's files (or this process's
    instruments), plus ``extra`` collectors."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    reg = CollectorRegistry(auto_describe=False)
    path = multiprocess_dir()
    if path:
        MultiProcessCollector(reg, path=path)
    else:
        _get(SPECS[0].name)  # make sure the in-process instruments exist
        reg.register(_InProcess())
    for collector in extra:
        reg.register(collector)
    return reg


class _InProcess:
    """Relays the in-process registry (single-process mode: tests, one-shot runs)."""

    def collect(self) -> Iterator[Any]:
        yield from _registry.collect()


def progress_percentage(job_status: str, source_bytes: int | None,
                        bytes_read: int) -> float | None:
    """A job's progress: 100 when finished, else bytes read / file size (None: unknown)."""
    if job_status in ("COMPLETED", "FAILED"):
        return 100.0
    if not source_bytes:
        return None
    return round(min(100.0, 100.0 * bytes_read / source_bytes), 2)


@dataclass(frozen=True)
class JobProgress:
    """A job's progress as its row tells it (``jobs show``, ``submit --wait``, the jobs
    page): percent read, rows per second and the time left, None each where unknown."""

    percent: float | None
    rows_per_s: float | None
    eta_s: float | None
    elapsed_s: float | None  # from its first start to its last committed batch (or end)


class ProgressRow(Protocol):
    """What ``job_progress`` reads of a job row (``jobs.JobRow``, which metrics may not
    import)."""

    @property
    def status(self) -> str: ...
    @property
    def source_bytes(self) -> int | None: ...
    @property
    def bytes_read(self) -> int: ...
    @property
    def rows_committed(self) -> int: ...
    @property
    def started_at(self) -> datetime | None: ...
    @property
    def updated_at(self) -> datetime | None: ...
    @property
    def finished_at(self) -> datetime | None: ...


def job_progress(row: ProgressRow) -> JobProgress:
    """The figures of a job from its row: the rows committed between its first start and
    its last batch (or its end), both times the database's clock, so a reader on another
    machine computes the same figures. ETA: the time taken so far times what is left to
    read over what was read (running file jobs only)."""
    percent = progress_percentage(row.status, row.source_bytes, row.bytes_read)
    last = row.finished_at or row.updated_at
    if row.started_at is None or last is None:
        return JobProgress(percent, None, None, None)
    elapsed = max((last - row.started_at).total_seconds(), 0.0)
    rate = row.rows_committed / elapsed if elapsed > 0 else None
    eta = None
    if row.status == "PROCESSING" and row.source_bytes and row.bytes_read > 0:
        done = min(row.bytes_read / row.source_bytes, 1.0)
        eta = elapsed * (1 - done) / done
    return JobProgress(percent, rate, eta, elapsed)
