"""Every Prometheus metric of nodes-import, declared once (``SPECS``), created lazily.

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
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True)
class Spec:
    """One metric: its name, type, meaning, label names and (histograms) buckets."""

    name: str
    kind: str  # counter | histogram | gauge
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    side: str = "worker"  # worker | parent | scrape (computed when /metrics is read)


SPECS: tuple[Spec, ...] = (
    # -- Kafka (parent)
    Spec("kafka_consumer_messages_received", "counter",
         "Job messages polled from Kafka.", ("topic",), side="parent"),
    Spec("kafka_consumer_messages_processed", "counter",
         "Job messages done (job terminal or message dead-lettered): their offsets may be "
         "committed.", ("topic",), side="parent"),
    Spec("kafka_consumer_errors", "counter",
         "Consumer errors reported by librdkafka, and failed offset commits.", ("code",),
         side="parent"),
    Spec("kafka_dlq_messages_produced", "counter",
         "Dead letters acknowledged by the broker, by stage (parse, validate, backpressure, "
         "import).", ("stage",), side="parent"),
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
    Spec("node_import_batch_duration", "histogram",
         "Seconds to write one batch partition (COPY, upsert, counters; retries included).",
         buckets=BATCH_BUCKETS),
    Spec("node_import_batches_processed", "counter", "Batch partitions committed."),
    Spec("node_import_batch_failures", "counter",
         "Batch partitions whose write kept failing; their rows were recorded as failed."),
    Spec("node_import_total_duration", "histogram",
         "Seconds from a job's start to its end (per run; a resumed job starts again).",
         ("status",), buckets=JOB_BUCKETS),
    Spec("node_import_metadata_duration", "histogram",
         "Seconds to validate a batch and encode its rows and metadata JSON for COPY.",
         buckets=ENCODE_BUCKETS),
    Spec("node_import_success", "counter",
         "Rows imported (inserted, updated or unchanged).", JOB_LABELS),
    Spec("node_import_failures", "counter",
         "Rows rejected (a job_failures row each).", JOB_LABELS),
    Spec("node_import_conflict_updates", "counter",
         "Rows that updated an existing node (same reference_id and group)."),
    Spec("node_import_rows", "counter",
         "Rows by outcome: inserted, updated, unchanged, failed.", ("outcome",)),
    Spec("node_import_errors", "counter",
         "Errors that failed a job or a batch, by exception class.", ("kind",)),
    Spec("node_import_retries", "counter",
         "Retries of a database operation after a transient error."),
    Spec("node_import_jobs_purged", "counter",
         "Finished jobs deleted by housekeeping (with their job_failures rows).", side="parent"),
    # -- the daemon's window and pool (scrape)
    Spec("executor_queue_size", "gauge",
         "Jobs in the in-flight window not running on a worker (to start, queued for a "
         "worker, or waiting for a dead letter).", side="scrape"),
    Spec("executor_active_threads", "gauge",
         "Worker processes busy with a job.", side="scrape"),
    Spec("executor_max_workers", "gauge",
         "Worker processes in the pool (node.import.executor.max-pool-size).", side="scrape"),
    Spec("node_import_jobs_in_flight", "gauge",
         "Messages taken and not done (the window; at most queue-capacity).", side="scrape"),
    # -- job_status (scrape)
    Spec("job_progress_percentage", "gauge",
         "Compressed bytes read / file size of each PROCESSING job this daemon runs (file "
         "jobs only).", ("job_id",), side="scrape"),
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
    names: set[str] = set()
    for spec in SPECS:
        if spec.kind == "counter":
            names.add(spec.name + "_total")
        elif spec.kind == "histogram":
            names.update(spec.name + s for s in ("_bucket", "_sum", "_count"))
        else:
            names.add(spec.name)
    return names


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
    _get("node_import_metadata_duration").observe(seconds)


def batch_written(group: str, domain: str, *, inserted: int, updated: int, unchanged: int,
                  failed: int, seconds: float) -> None:
    """One batch partition committed, with what its rows did."""
    _get("node_import_batch_duration").observe(seconds)
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
    for outcome, count in (("inserted", inserted), ("updated", updated),
                           ("unchanged", unchanged), ("failed", failed)):
        if count:
            rows.labels(outcome=outcome).inc(count)


def job_started() -> None:
    """A job started (or resumed) importing."""
    _get("node_import_jobs_started").inc()


def job_finished(status: str, seconds: float, error_kind: str | None = None) -> None:
    """A job ended COMPLETED or FAILED (``error_kind``: the failing exception class)."""
    name = "node_import_jobs_completed" if status == "COMPLETED" else "node_import_jobs_failed"
    _get(name).inc()
    _get("node_import_total_duration").labels(status=status).observe(seconds)
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
    _get("kafka_dlq_messages_produced").labels(stage=stage).inc()


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
    progress: dict[str, float] = field(default_factory=dict)  # job_id -> percent


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
            except Exception as exc:  # noqa: BLE001 - reported, the other gauges still go out
                if self.on_error is not None:
                    self.on_error(exc)
        for name, value in snap.gauges.items():
            yield GaugeMetricFamily(name, BY_NAME[name].help, value=value)
        lag = GaugeMetricFamily("kafka_consumer_lag", BY_NAME["kafka_consumer_lag"].help,
                                labels=("topic", "partition"))
        for (topic, partition), value in sorted(snap.lag.items()):
            lag.add_metric((topic, str(partition)), value)
        yield lag
        spec = BY_NAME["job_progress_percentage"]
        progress = GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)
        for job_id, value in sorted(snap.progress.items()):
            progress.add_metric((job_id,), value)
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


def progress_percentage(row: Mapping[str, Any]) -> float | None:
    """A job's progress: 100 when finished, else bytes read / file size (None: unknown)."""
    if row.get("status") in ("COMPLETED", "FAILED"):
        return 100.0
    size, read = row.get("source_bytes"), row.get("bytes_read") or 0
    if not size:
        return None
    return round(min(100.0, 100.0 * read / size), 2)
