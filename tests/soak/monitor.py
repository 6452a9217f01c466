"""What the soak watches while it runs: progress in job_status and the processes' memory.

Every ``SAMPLE_S`` it reads, on a direct connection (the fault proxy is not in the way),
the rows committed over all jobs and the jobs finished: the timeline of throughput and
the "next committed batch" that recovery times are measured to. Every ``RSS_S`` it reads
the resident memory of every daemon, worker and helper process, and takes the threads of a
daemon that stopped logging for ``SILENT_S`` or went over its RSS bound (``py-spy dump``,
once per process, into ``stacks/`` of the work dir): a stall is then explained by its stack,
not guessed at from its last log line.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tests.soak.cluster import Cluster, drop

SAMPLE_S = 0.25
RSS_S = 1.0
# Each process's bound (checked at the end by the checker; a daemon over it is dumped).
RSS_BOUND_MB = {"worker": 300.0, "daemon": 250.0, "helper": 100.0}
# The job stream never leaves a daemon this long without a log line (the trickle of small
# jobs, lease renewals); a daemon this quiet may be stuck: its threads are dumped.
SILENT_S = 15.0


def _py_spy() -> str | None:
    """py-spy beside this Python (the dev extra) or on PATH; None: no dumps."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


@dataclass
class Sample:
    t: float  # seconds from the start of the run
    rows: int  # sum of rows_committed
    done: int  # jobs COMPLETED or FAILED
    jobs: int  # job rows


@dataclass
class Memory:
    """The largest RSS seen, per role and per process."""

    peak: dict[str, float] = field(default_factory=dict)  # role -> MB
    by_pid: dict[int, tuple[str, float]] = field(default_factory=dict)


class Monitor:
    """Samples progress and memory until ``stop``."""

    def __init__(self, cluster: Cluster, t0: float) -> None:
        self.cluster, self.t0 = cluster, t0
        self.samples: list[Sample] = []
        self.memory = Memory()
        self.db_gaps = 0  # samples missed because PostgreSQL was restarting
        self.stop = threading.Event()
        self._conn: Any = None
        self._lock = threading.Lock()  # read() runs in the sampler and the main thread
        self.dumps: list[str] = []  # stacks/ files written (silent or oversized daemons)
        self._dumped: set[int] = set()
        self._py_spy = _py_spy()
        self._threads = [threading.Thread(target=self._progress, name="soak-progress",
                                          daemon=True),
                         threading.Thread(target=self._rss, name="soak-rss", daemon=True)]

    def now(self) -> float:
        return time.monotonic() - self.t0

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(10)
        with self._lock:
            drop(self._conn)
            self._conn = None

    def read(self) -> Sample | None:
        """One progress sample now (None while the database does not answer)."""
        with self._lock:
            return self._read()

    def _read(self) -> Sample | None:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = self.cluster.pg.connect(timeout=2)
            row = self._conn.execute(
                "SELECT coalesce(sum(rows_committed), 0)::bigint,"
                " count(*) FILTER (WHERE status IN ('COMPLETED', 'FAILED')), count(*)"
                " FROM job_status").fetchone()
        except Exception:
            drop(self._conn)
            self._conn = None
            self.db_gaps += 1
            return None
        assert row is not None
        return Sample(round(self.now(), 2), int(row[0]), int(row[1]), int(row[2]))

    def _progress(self) -> None:
        while not self.stop.wait(SAMPLE_S):
            sample = self.read()
            if sample is not None:
                self.samples.append(sample)

    def _rss(self) -> None:
        while not self.stop.wait(RSS_S):
            for role, proc in self.cluster.processes():
                try:
                    mb = proc.memory_info().rss / 2**20
                except psutil.Error:
                    continue
                if mb > self.memory.peak.get(role, 0.0):
                    self.memory.peak[role] = round(mb, 1)
                if mb > self.memory.by_pid.get(proc.pid, ("", 0.0))[1]:
                    self.memory.by_pid[proc.pid] = (role, round(mb, 1))
                if role == "daemon" and mb > RSS_BOUND_MB["daemon"]:
                    self._dump(proc.pid, f"rss {mb:.0f} MB")
            self._watch_silence()

    def _watch_silence(self) -> None:
        """Dump each live daemon whose log has not grown for ``SILENT_S``."""
        for slot in self.cluster.slots:
            life = slot.current
            if life is None or life.ended is not None:
                continue
            try:
                quiet = time.time() - life.process.log_path.stat().st_mtime
            except OSError:
                continue
            if quiet > SILENT_S and time.monotonic() - life.started > SILENT_S:
                self._dump(life.pid, f"daemon{slot.index} silent {quiet:.0f} s")

    def _dump(self, pid: int, why: str) -> None:
        """``py-spy dump`` of ``pid``'s threads, once per process."""
        if self._py_spy is None or pid in self._dumped:
            return
        self._dumped.add(pid)
        folder = self.cluster.folder / "stacks"
        folder.mkdir(exist_ok=True)
        path = folder / f"{pid}-t{self.now():.0f}.txt"
        try:
            out = subprocess.run([self._py_spy, "dump", "--pid", str(pid)],
                                 capture_output=True, text=True, timeout=30)
            text = out.stdout + out.stderr
        except (OSError, subprocess.SubprocessError) as exc:
            text = f"py-spy failed: {exc!r}"
        path.write_text(f"{why}, t={self.now():.1f}s\n{text}")
        self.dumps.append(path.name)

    def progress_after(self, t: float) -> float | None:
        """The time of the first sample after ``t`` whose rows or finished jobs exceed the
        last sample at or before ``t`` (the next committed batch); None if none."""
        before = None
        for sample in self.samples:
            if sample.t <= t or before is None:
                before = sample
            elif sample.rows > before.rows or sample.done > before.done:
                return sample.t
        return None
