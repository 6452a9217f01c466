"""import's progress off a terminal: a line every interval, on a fake clock."""

from __future__ import annotations

from nodes_import.cli import progress
from nodes_import.worker.jobstate import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_line_is_printed_every_interval_and_not_in_between() -> None:
    clock, lines = Clock(), []
    report = progress.Periodic("job-1", 30.0, echo=lines.append, clock=clock)
    figures = Progress(rows_committed=0, started=clock.now, source_bytes=1000)
    for second in range(1, 95):
        clock.now = 1000.0 + second
        figures.rows_committed, figures.bytes_read = second * 1000, second * 10
        report(figures)
    assert len(lines) == 3  # at 30, 60 and 90 s
    assert lines[0].startswith("job job-1: 30s  30,000 rows  1,000 rows/s")
    assert "30.0% read" in lines[0] and "ETA 70s" in lines[0]
    assert lines[2].startswith("job job-1: 90s  90,000 rows")


def test_a_slow_batch_delays_the_next_line_instead_of_bunching_them() -> None:
    clock, lines = Clock(), []
    report = progress.Periodic("j", 10.0, echo=lines.append, clock=clock)
    figures = Progress(rows_committed=5, failed=2, started=clock.now)
    clock.now += 35  # one batch took 35 s
    report(figures)
    report(figures)
    assert len(lines) == 1 and "2 failed" in lines[0]
    clock.now += 9.9
    report(figures)
    assert len(lines) == 1
    clock.now += 0.1
    report(figures)
    assert len(lines) == 2


def test_off_a_terminal_lines_unless_the_interval_is_0_and_on_one_the_bar() -> None:
    assert isinstance(progress.reporter("j", on_terminal=False, interval_s=30, as_json=True),
                      progress.Periodic)
    assert progress.reporter("j", on_terminal=False, interval_s=0, as_json=False) is None
    assert isinstance(progress.reporter("j", on_terminal=True, interval_s=30, as_json=False),
                      progress.Bar)
    assert progress.reporter("j", on_terminal=True, interval_s=30, as_json=True) is None


def test_the_first_line_is_due_an_interval_after_the_job_started_not_the_command() -> None:
    clock, lines = Clock(), []
    report = progress.Periodic("j", 30.0, echo=lines.append, clock=clock)
    clock.now += 20  # connecting, starting the embedded server...
    figures = Progress(rows_committed=10, started=clock.now)
    clock.now += 15
    report(figures)
    assert lines == []
    clock.now += 15
    report(figures)
    assert len(lines) == 1 and lines[0].startswith("job j: 30s  10 rows")
