"""The daemon's process pool (parent side): started warm, replaced when broken, killed last.

A ``ProcessPoolExecutor`` with an explicit start method (spawn or forkserver: librdkafka
runs threads in the daemon that a fork would copy half-way). Each worker process runs
``worker.init_worker`` once. A worker that dies breaks the whole executor; ``replace``
starts a new one and bumps ``generation``, so the daemon replaces it once however many
of its futures report the breakage. Before the old one goes, ``replace`` notes which
worker call was on the dead process (each worker shows its running call in a shared
table) and kills the old executor's other workers: they ignore SIGTERM and would finish
jobs that the daemon already runs again on the new pool. Only the jobs of the dead
worker's call count a crash (``died_on``). ``stop_jobs`` tells running jobs, through a
multiprocessing event, to stop after their in-flight batches. Workers log through the
daemon: each executor gets a fresh log queue and a ``logs.WorkerLogs`` thread writing its
lines (fresh, because a worker killed while writing can leave a queue unusable).
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import time
import weakref
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import connection as mp_connection
from typing import Any

from nodes_import import logs, worker
from nodes_import.config import ImportConfig
from nodes_import.errors import NodesImportError
from nodes_import.jobs import ImportJob, JobOutcome

log = logging.getLogger(__name__)

# How long the core workers may take to start (spawn + imports: ~1 s measured).
WARM_UP_TIMEOUT_S = 60.0
# After a worker death, how long the other workers may take to be seen dead too before the
# live ones count as survivors (killed, their jobs not marked).
DEATH_GRACE_S = 0.5


class WorkerPool:
    """``max_workers`` worker processes for jobs; ``core`` of them started up front."""

    def __init__(self, settings: worker.WorkerSettings, *, max_workers: int, core: int,
                 start_method: str) -> None:
        self.settings, self.max_workers, self.core = settings, max_workers, core
        self._mp = multiprocessing.get_context(start_method)
        # Who a worker's OS parent is, for its die-with-parent check: this process when
        # spawned; with forkserver the server (which exits with us), not checked.
        self._parent_pid = os.getpid() if start_method == "spawn" else None
        self._stop_jobs = self._mp.Event()
        self._executor: ProcessPoolExecutor | None = None
        self._logs: logs.WorkerLogs | None = None
        self.generation = 0
        # A bundled job's future -> the worker call that runs its bundle (``call_of``).
        self._calls: weakref.WeakKeyDictionary[Future[JobOutcome], Future[Any]] = \
            weakref.WeakKeyDictionary()
        # Each worker call's number, and the table where workers show the call they run.
        self._call_ids: weakref.WeakKeyDictionary[Future[Any], int] = weakref.WeakKeyDictionary()
        self._numbers = itertools.count(1)
        self._table: Any = None
        # A broken generation -> the calls that were on its dead worker(s); None: unknown.
        self._died: dict[int, set[int] | None] = {}

    def start(self) -> None:
        """A new executor, its core workers started; ``NodesImportError`` if they cannot."""
        self.generation += 1
        self._logs = logs.WorkerLogs(self._mp.Queue())
        self._logs.start()
        # (pid, running call) per worker process: an executor never starts more than
        # max_workers (a dead one breaks it instead of being replaced).
        self._table = self._mp.Array("q", 2 * self.max_workers)
        self._executor = ProcessPoolExecutor(
            max_workers=self.max_workers, mp_context=self._mp,
            initializer=worker.init_worker,
            initargs=(self.settings, self._stop_jobs, self._logs.queue, self._table,
                      self._parent_pid))
        # Started now, so the first job does not wait for a spawn.
        warm = [self._executor.submit(worker.warm_up)
                for _ in range(min(self.core, self.max_workers))]
        try:
            for future in warm:
                future.result(timeout=WARM_UP_TIMEOUT_S)
        except Exception as exc:  # BrokenProcessPool, a timeout: the workers cannot start
            raise NodesImportError(f"worker processes cannot start: {exc!r}") from exc

    def submit(self, job: ImportJob, cfg: ImportConfig) -> Future[JobOutcome]:
        """Queue a job (raises ``BrokenProcessPool`` when the pool is broken)."""
        if self._executor is None:
            raise NodesImportError("the worker pool is not started")
        number = next(self._numbers)
        future = self._executor.submit(worker.run_job, job, cfg, number)
        self._call_ids[future] = number
        return future

    def submit_bundle(self, jobs: list[ImportJob], cfg: ImportConfig) -> list[Future[JobOutcome]]:
        """Queue small jobs as ONE worker call (``worker.run_bundle``); one future per job,
        each settled with its job's outcome (or the call's exception) when the call ends."""
        if self._executor is None:
            raise NodesImportError("the worker pool is not started")
        number = next(self._numbers)
        whole = self._executor.submit(worker.run_bundle, jobs, cfg, number)
        self._call_ids[whole] = number
        parts: list[Future[JobOutcome]] = [Future() for _ in jobs]

        def spread(done: Future[list[JobOutcome]]) -> None:
            if done.cancelled():  # queued in a pool being replaced: never started
                for part in parts:
                    part.cancel()
                return
            exc = done.exception()
            results = done.result() if exc is None else []
            if exc is None and len(results) != len(parts):
                exc = RuntimeError(f"{len(results)} outcomes for {len(parts)} jobs")
            for n, part in enumerate(parts):
                if exc is not None:
                    part.set_exception(exc)
                else:
                    part.set_result(results[n])

        for part in parts:
            self._calls[part] = whole
        whole.add_done_callback(spread)
        return parts

    def call_of(self, future: Future[JobOutcome]) -> Future[Any]:
        """The worker call that runs a job: its bundle's call, or its own future."""
        call = self._calls.get(future)
        return call if call is not None else future

    def running(self, futures: list[Future[JobOutcome]]) -> tuple[int, int]:
        """Of these jobs' futures: (worker calls running, jobs running). A bundle is one
        call and all its jobs run while it does. A call is "running" from when the pool
        queues it to a worker, which can be one more than the workers."""
        calls = [id(call) for f in futures if (call := self.call_of(f)).running()]
        return len(set(calls)), len(calls)

    def died_on(self, future: Future[JobOutcome], generation: int) -> bool:
        """Whether this job's call ran on the worker whose death broke pool ``generation``
        (True when that cannot be told: then every interrupted job counts the crash)."""
        died = self._died.get(generation)
        return died is None or self._call_ids.get(self.call_of(future)) in died

    def _dead_workers_calls(self) -> set[int] | None:
        """The calls running on this executor's processes that have exited (None: no
        exited process found, so no way to tell). Read before anything kills the others.

        Waits up to ``DEATH_GRACE_S`` for the live ones to exit too: several workers
        killed at once die one after the other (a large process takes a while to free its
        memory), and one seen alive now may be dying. A survivor that finishes its call
        in that time exits cleanly with its call cleared: it marks nothing."""
        processes = self._processes()
        deadline = time.monotonic() + DEATH_GRACE_S
        while (alive := [p for p in processes.values() if p.exitcode is None]) \
                and (left := deadline - time.monotonic()) > 0:
            mp_connection.wait([p.sentinel for p in alive], timeout=left)
        dead = {pid for pid, proc in processes.items() if proc.exitcode is not None}
        if not dead or self._table is None:
            return None
        table = list(self._table)
        return {table[n + 1] for n in range(0, len(table), 2)
                if table[n] in dead and table[n + 1]}

    def _processes(self) -> dict[int, Any]:
        """The executor's worker processes by pid (a copy; no public API gives them)."""
        return dict(getattr(self._executor, "_processes", None) or {})

    def _kill_workers(self) -> None:
        """End the executor's live workers, busy or not (no public API does): they ignore
        SIGTERM; after a breakage they would finish calls whose jobs run again elsewhere."""
        for proc in self._processes().values():
            if proc.exitcode is None:
                proc.kill()

    def replace(self, reason: str) -> None:
        """Drop a broken executor and start another; a failed start is logged, not raised
        (the jobs then fail as broken again and come back here)."""
        log.error("process pool broken; replacing it", extra={"fields": {"reason": reason}})
        if self._executor is not None:
            self._died[self.generation] = self._dead_workers_calls()
            for old in [g for g in self._died if g < self.generation - 8]:
                del self._died[old]  # a slot of a long-gone generation counts the crash
            self._kill_workers()
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self._logs is not None:  # the old workers' last lines, if the queue still works
            self._logs.stop(timeout_s=0.5)
        try:
            self.start()
        except NodesImportError as exc:
            log.error("new worker processes did not start", extra={"fields": {
                "error": str(exc)}})

    def stop_jobs(self) -> None:
        """Running jobs stop after their in-flight batches (they resume later)."""
        self._stop_jobs.set()

    def shutdown(self, *, kill: bool) -> None:
        """Stop the workers; ``kill`` ends busy ones too (their open batch rolls back)."""
        if self._executor is None:
            return
        # A worker that died idle broke the executor without a job to notice it (nothing
        # called ``replace``): its manager thread then waits for the survivors, which ignore
        # SIGTERM and may never see the shutdown (the dead one may have held the call
        # queue's lock). Found by the chaos soak: a SIGTERM after an idle worker's death
        # hung the stop order. The survivors are killed then too.
        if kill or any(proc.exitcode is not None for proc in self._processes().values()):
            self._kill_workers()
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._executor = None
        if self._logs is not None:
            self._logs.stop()
            self._logs = None
