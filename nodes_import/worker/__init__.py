"""The process pool's entry points (worker side): ``init_worker``, ``run_job``, ``run_bundle``.

Each worker process builds its own psycopg pool once, in ``init_worker``; nothing that
cannot cross a process boundary is ever passed in. Jobs come in as ``ImportJob`` and
leave as ``JobOutcome`` (errors cross as data, never as live exceptions). Workers
ignore SIGINT/SIGTERM: the daemon owns the stop order and tells running jobs to stop
after their in-flight batches through ``stop_event``. Each worker also writes, in a
table shared with the daemon (``calls``), which worker call it is running: when a worker
dies, the daemon can tell the call that was on it from the calls its death interrupted
on the others. This module must never import the Kafka client.

The engine, the store (psycopg) and Arrow are imported inside the entry points that use
them: importing any module of this package runs this one first, and the command line
imports ``worker.dryrun`` and ``worker.jobstate`` where no database is used
(``import --dry-run``, the progress display, ``--help``).
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import signal
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nodes_import import logs, metrics, process, status
from nodes_import.config import ImportConfig
from nodes_import.errors import ConnectionLostError, NodesImportError, type_name
from nodes_import.jobs import Ending, ImportJob, JobOutcome

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

log = logging.getLogger(__name__)

# How often a running job checks whether the daemon asked it to stop.
STOP_CHECK_S = 0.2


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker process needs to start. Primitives only (it is pickled)."""

    dsn: str
    pool_size: int
    connect_timeout_s: float
    log_level: str = "INFO"
    group_label: bool = True  # metrics: label rows with the job's group
    domain_label: bool = True  # ... and domain


# The worker process's own state, set once by init_worker.
_settings: WorkerSettings | None = None
_pool: ConnectionPool | None = None
_stop: Any = None  # a multiprocessing Event shared with the daemon
# The daemon's table of (pid, running call id) pairs, one pair per worker process of this
# executor (a multiprocessing Array of int64), and this process's pair in it.
_calls: Any = None
_call_slot: int | None = None


def init_worker(settings: WorkerSettings, stop_event: Any, log_queue: Any = None,
                calls: Any = None, parent_pid: int | None = None) -> None:
    """Executor initializer: ignore stop signals, die with the parent (``parent_pid``: the
    daemon that spawned this process, checked in case it died already), log as JSON
    through the parent (its ``log_queue``; stderr without one), take a pair in the
    ``calls`` table, open this process's pool."""
    global _settings, _stop, _calls, _call_slot
    from nodes_import.pipeline import memory

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    process.die_with_parent(signal.SIGKILL, parent_pid)  # no orphan keeps writing a job
    if log_queue is not None:
        logs.setup_worker(log_queue, settings.log_level)
    else:
        logs.setup(settings.log_level)
    metrics.configure(group=settings.group_label, domain=settings.domain_label)
    metrics.prepare()
    # The engine loaded before the switch to jemalloc, as the command line does (switched
    # first, a 1M-row import made twice the page faults: cli.imports._loaded).
    importlib.import_module("nodes_import.worker.engine")
    memory.use_jemalloc()
    _settings, _stop = settings, stop_event
    if calls is not None:
        _calls, _call_slot = calls, _take_call_slot(calls)
    try:
        _open_pool()
    except NodesImportError as exc:  # the database is away: each job tries again
        log.warning("worker cannot reach the database yet", extra={"fields": {"error": str(exc)}})
    gc.freeze()  # what start-up loaded lives as long as the process (see cli.main)


def _take_call_slot(calls: Any) -> int | None:
    """The first free (pid 0) pair of the table, marked with this pid; None if all are
    taken (more processes than the daemon planned for: its calls are then not told apart)."""
    with calls.get_lock():
        for n in range(0, len(calls), 2):
            if calls[n] == 0:
                calls[n], calls[n + 1] = os.getpid(), 0
                return n
    return None


@contextmanager
def _running(call_id: int) -> Iterator[None]:
    """Show ``call_id`` in this process's pair of the table while the call runs."""
    if _calls is None or _call_slot is None or not call_id:
        yield
        return
    _calls[_call_slot + 1] = call_id
    try:
        yield
    finally:
        _calls[_call_slot + 1] = 0


def _open_pool() -> ConnectionPool:
    """This process's pool, opened on first use. An initializer that raised would break
    the whole executor, so a database outage must surface per job instead."""
    global _pool
    from nodes_import.store import connection

    if _pool is None:
        if _settings is None:
            raise RuntimeError("init_worker did not run in this process")
        _pool = connection.open_pool(_settings.dsn, max_size=_settings.pool_size,
                                  timeout_s=_settings.connect_timeout_s,
                                  name="nodes-import-worker")
    return _pool


def _reset_pool() -> None:
    """After the database went away, the next job gets a fresh pool: the old one may be
    waiting out psycopg_pool's reconnect backoff (seconds, doubling during the outage)."""
    global _pool
    old, _pool = _pool, None
    if old is not None:
        try:
            old.close(timeout=1.0)
        except Exception as exc:
            log.debug("old pool did not close cleanly", extra={"fields": {"error": str(exc)}})


def warm_up() -> int:
    """A no-op the daemon submits to start its core workers up front; returns the pid."""
    return os.getpid()


def _watch_stop(cancel: threading.Event, finished: threading.Event) -> None:
    while not finished.wait(STOP_CHECK_S):
        if _stop is not None and _stop.is_set():
            cancel.set()
            return


def run_job(job: ImportJob, cfg: ImportConfig, call_id: int = 0) -> JobOutcome:
    """Run one job with the engine; every error comes back inside the outcome.
    ``call_id``: the daemon's number for this call (0: a call from inside this worker)."""
    with _running(call_id):
        return _run_job(job, cfg)


def _run_job(job: ImportJob, cfg: ImportConfig) -> JobOutcome:
    from nodes_import.worker import engine

    cancel, finished = threading.Event(), threading.Event()
    watcher = threading.Thread(target=_watch_stop, args=(cancel, finished),
                               name=f"stop-watch-{job.job_id[:8]}", daemon=True)
    watcher.start()
    try:
        outcome = engine.run_import(job, cfg, _open_pool(), cancel=cancel)
        if outcome.ending is Ending.OUTAGE:
            _reset_pool()  # its connections went with the database
        return outcome
    except NodesImportError as exc:
        # The job could not start (the database stayed away): not terminal, tried again
        # later; an outage when the link itself failed.
        _reset_pool()
        ending = Ending.OUTAGE if isinstance(exc, ConnectionLostError) else Ending.NOT_STARTED
        return JobOutcome(job.job_id, status.PENDING, str(exc), error_type=type_name(exc),
                          stack_trace=traceback.format_exc(), ending=ending)
    except Exception as exc:  # a bug: FAIL the job rather than lose it silently
        log.exception("job crashed", extra={"fields": {"jobId": job.job_id}})
        return _fail(job, exc)
    finally:
        finished.set()


def run_bundle(jobs: list[ImportJob], cfg: ImportConfig, call_id: int = 0) -> list[JobOutcome]:
    """Run small jobs together (``bundle``); one outcome per job, in order (``call_id`` as
    for ``run_job``).

    1. jobs with an ID the usual path might reject are set aside;
    2. the rest, in rounds where no group appears twice, each round one transaction;
    3. a round that is declined or fails rolls back whole: its jobs, and those set aside,
       run one by one through ``run_job`` (which resumes, retries and fences as usual).
    """
    with _running(call_id):
        return _run_bundle(jobs, cfg)


def _run_bundle(jobs: list[ImportJob], cfg: ImportConfig) -> list[JobOutcome]:
    from nodes_import.store import connection
    from nodes_import.worker import bundle

    results: dict[int, JobOutcome] = {}
    # Per group, the first job that goes one by one: the group's later jobs follow it,
    # so that a group's jobs are still applied in message order.
    alone_from: dict[str, int] = {}
    for n, job in enumerate(jobs):
        if not bundle.clean(job, cfg):
            alone_from.setdefault(job.group_id, n)
    for positions in bundle.rounds(jobs):
        numbers = [n for n in positions if n < alone_from.get(jobs[n].group_id, len(jobs))]
        if not numbers:
            continue
        members = [jobs[n] for n in numbers]
        try:
            with _open_pool().connection() as conn:
                written = bundle.write(
                    conn, members, owner=members[0].claimed_by,
                    timeout_ms=cfg.batch_timeout_ms, new_id=connection.new_id_function(conn))
        except Exception as exc:  # rolled back, nothing committed: the usual path runs them
            if isinstance(exc, NodesImportError):
                log.info("bundle declined; its jobs run one by one", extra={"fields": {
                    "jobs": len(members), "error": str(exc)}})
            else:  # a bug must not lose the jobs
                log.exception("bundle crashed; its jobs run one by one",
                              extra={"fields": {"jobs": len(members)}})
            for n in numbers:
                group = jobs[n].group_id
                alone_from[group] = min(n, alone_from.get(group, n))
            continue
        results.update(zip(numbers, bundle.outcomes(members, written), strict=True))
    for n in range(len(jobs)):  # in message order
        if n not in results:
            results[n] = _run_job(jobs[n], cfg)
    return [results[n] for n in range(len(jobs))]


def _fail(job: ImportJob, exc: Exception) -> JobOutcome:
    from nodes_import.store import jobrows

    error = f"internal error: {type(exc).__name__}: {exc}"
    trace = traceback.format_exc()
    try:
        with _open_pool().connection() as conn:
            row = jobrows.finish_job(conn, job_id=job.job_id, status=status.FAILED,
                                     error=error)
    except Exception:  # the database is gone too: the daemon retries the job later
        log.exception("cannot record the crash", extra={"fields": {"jobId": job.job_id}})
        return JobOutcome(job.job_id, status.PENDING, error, error_type=type_name(exc),
                          stack_trace=trace, ending=Ending.NOT_STARTED)
    return JobOutcome.ended(job.job_id, row, error, missing=status.FAILED,
                            error_type=type_name(exc), stack_trace=trace)
