"""How the command line shows a job. A running job (``import``; ``submit --wait``): a bar
on a terminal, a line every N seconds elsewhere (a log file, journald, CI), as
timescaledb-parallel-copy's ``--reporting-period`` does; both are ``on_progress``
callbacks of the engine, called after each committed batch part, from the writer threads.
A job row (``import``, ``jobs show``, ``submit --wait``): ``summary``, ``final_text``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict

import click

from nodes_import import metrics, status
from nodes_import.cli.common import dumps
from nodes_import.jobs import JobRow
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


def progress_line(row: JobRow) -> str:
    """Rows, percent read, rows/s and ETA of a running job, as ``jobs show`` prints them."""
    p = metrics.job_progress(row)
    parts = [f"{row.rows_committed:,} rows"]
    if p.percent is not None:
        parts.append(f"{p.percent:.1f}% read")
    if p.rows_per_s is not None:
        parts.append(f"{p.rows_per_s:,.0f} rows/s")
    if p.eta_s is not None:
        parts.append(f"ETA {p.eta_s:,.0f}s")
    return ", ".join(parts)


def summary(row: JobRow) -> str:
    """A job row as text: what ``import``, ``jobs show`` and ``submit --wait`` print."""
    lines = [
        f"job {row.id}: {row.status}",
        f"  group {row.group_id}, domain {row.domain_id}, type {row.node_type}",
        f"  source {row.source}",
        (f"  rows {row.total_nodes:,}: {row.success_count:,} imported "
         f"({row.inserted_count:,} inserted, {row.updated_count:,} updated, "
         f"{row.unchanged_count:,} unchanged), {row.failed_count:,} failed"),
    ]
    if row.status == status.PROCESSING:
        lines.append(f"  progress {progress_line(row)}")
        if row.cancel_requested_at is not None:
            lines.append(f"  cancel requested at {row.cancel_requested_at:%Y-%m-%d %H:%M:%S%z}"
                         ": it stops at its next batch boundary")
    if row.started_at and row.finished_at:
        seconds = (row.finished_at - row.started_at).total_seconds()
        rate = row.total_nodes / seconds if seconds > 0 else 0
        lines.append(f"  took {seconds:.2f}s ({rate:,.0f} rows/s)")
    if row.error:
        lines.append(f"  error: {row.error}")
    return "\n".join(lines)


def final_text(row: JobRow, as_json: bool) -> str:
    """A finished job's row as ``import`` prints it: its status first in JSON."""
    return dumps({"status": row.status, **asdict(row)}) if as_json else summary(row)
