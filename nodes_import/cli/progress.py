"""How ``nodes-import import`` shows a running job: a bar on a terminal, a line every N
seconds elsewhere (a log file, journald, CI), as timescaledb-parallel-copy's
``--reporting-period`` does. Both are ``on_progress`` callbacks of the engine, called
after each committed batch part, from the writer threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import click

from nodes_import.worker.jobstate import Progress

# How often the terminal bar redraws at most.
BAR_REDRAW_S = 0.25
# The default --progress-interval off a terminal.
PROGRESS_INTERVAL_S = 30.0


def figures(p: Progress, now: float) -> str:
    """Rows, rate, failures and, when the source size is known, percent read and ETA."""
    elapsed = max(now - p.started, 1e-6)
    text = f"{p.rows_committed:,} rows  {p.rows_committed / elapsed:,.0f} rows/s"
    if p.failed:
        text += f"  {p.failed:,} failed"
    if p.source_bytes:
        frac = min(p.bytes_read / p.source_bytes, 1.0)
        eta = elapsed * (1 - frac) / frac if frac > 0 else 0
        text += f"  {frac:6.1%} read  ETA {eta:,.0f}s"
    return text


class Bar:
    """A one-line progress display on a terminal, redrawn in place."""

    def __init__(self) -> None:
        self.last = 0.0

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        if now - self.last < BAR_REDRAW_S:
            return
        self.last = now
        click.echo("\r" + figures(p, now).ljust(79), nl=False, err=True)

    def done(self) -> None:
        """End the bar's line, if one was drawn."""
        if self.last:
            click.echo("", err=True)


class Periodic:
    """Off a terminal: one line (``job <id>: <elapsed>s  <figures>``) every ``interval_s``,
    the first ``interval_s`` after the job started. A batch that takes longer than the
    interval delays the next line: lines report progress, so none is printed without any."""

    def __init__(self, job_id: str, interval_s: float,
                 echo: Callable[[str], None] = lambda line: click.echo(line, err=True),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.job_id, self.interval_s, self.echo, self.clock = job_id, interval_s, echo, clock
        self.due: float | None = None  # set by the first report, from the job's start
        self._lock = threading.Lock()  # two writer threads report

    def __call__(self, p: Progress) -> None:
        now = self.clock()
        with self._lock:
            if self.due is None:
                self.due = p.started + self.interval_s
            if now < self.due:
                return
            self.due = now + self.interval_s
        self.echo(f"job {self.job_id}: {now - p.started:,.0f}s  {figures(p, now)}")

    def done(self) -> None:
        """Nothing to end: each line is whole."""


def reporter(job_id: str, *, on_terminal: bool, interval_s: float,
             as_json: bool) -> Bar | Periodic | None:
    """The display for a job: the bar on a terminal (not with --json), else periodic lines
    (``interval_s`` 0: none)."""
    if on_terminal:
        return None if as_json else Bar()
    return Periodic(job_id, interval_s) if interval_s > 0 else None
