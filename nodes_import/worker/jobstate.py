"""What one running job shares between the engine's reader and writer threads (worker
side): its progress, its fatal error, its deadline. A plain state holder: it does no I/O
and calls nothing; the engine borrows connections and calls the store itself."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nodes_import.config import ImportConfig
from nodes_import.errors import NodesImportError
from nodes_import.jobs import ImportJob

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

TIMEOUT_MESSAGE = "Timeout exceeded"
# How long past its statement_timeout a batch may wait for the server's answer before the
# connection is presumed stalled and dropped.
WATCHDOG_GRACE_S = 5.0


@dataclass
class Progress:
    """A job's running figures, as the engine knows them (the CLI's progress bar)."""

    rows_read: int = 0
    rows_committed: int = 0
    failed: int = 0
    bytes_read: int = 0
    source_bytes: int | None = None
    started: float = 0.0


class JobState:
    """The state one ``run_import`` call shares between its reader and writer threads:
    the job, its settings and pool, its progress, its first fatal error, and what
    ``begin`` learnt (the staged columns, the server's id function)."""

    def __init__(self, job: ImportJob, cfg: ImportConfig, pool: ConnectionPool,
                 on_progress: Callable[[Progress], None] | None,
                 cancel: threading.Event | None) -> None:
        self.job, self.cfg, self.pool = job, cfg, pool
        self.on_progress = on_progress
        self.cancel = cancel or threading.Event()
        self.progress = Progress(started=time.monotonic())
        self.deadline = self.progress.started + cfg.global_timeout_ms / 1000.0
        self.fatal: NodesImportError | None = None
        self.lock = threading.Lock()
        self.ctx = {"jobId": job.job_id, "groupId": job.group_id, "domainId": job.domain_id}
        self.columns: list[str] = []
        self.new_id = "gen_random_uuid()"

    def fail(self, exc: NodesImportError) -> None:
        """Record the job's fatal error (the first one wins)."""
        with self.lock:
            if self.fatal is None:
                self.fatal = exc

    def stopping(self) -> bool:
        """The job is failing or was told to stop: read and write no more."""
        return self.fatal is not None or self.cancel.is_set()

    def remaining_ms(self) -> int:
        """Milliseconds left before the job's global timeout (negative: past it)."""
        return int((self.deadline - time.monotonic()) * 1000)

    def committed(self, rows: int, failed: int, bytes_read: int) -> None:
        """Count a committed part: ``rows`` accounted for (written or failed), ``failed``
        of them failed, the source read up to ``bytes_read``; tell ``on_progress``."""
        with self.lock:
            self.progress.rows_committed += rows
            self.progress.failed += failed
            self.progress.bytes_read = max(self.progress.bytes_read, bytes_read)
            snapshot = Progress(**vars(self.progress))
        if self.on_progress is not None:
            self.on_progress(snapshot)
