"""The database circuit breaker (parent side): stop starting jobs while PostgreSQL is down.

Without it, a database outage makes the daemon hand every queued job to a worker, where
each one spends its whole retry budget against a dead server. With it:

- ``closed`` (normal): jobs start. ``failure_threshold`` database failures in a row
  (connection errors seen by the daemon or reported by its workers) open the breaker.
- ``open``: no job starts and consumption is paused (as the ``pause`` backpressure
  does, so the daemon stays in its group); running jobs go on as they can. When the
  probe delay has passed the breaker goes ``half-open``.
- ``half-open``: one probe (a fresh connection and ``SELECT 1``) is in flight. It
  answering closes the breaker; it failing re-opens it with the delay doubled, up to
  ``probe_max_s``.

Any success while closed resets the failure count. The breaker is pure state over an
injected clock: the daemon runs the probe and reports its result, so the state machine
is tested with a fake clock and no database.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"
# The gauge's value per state (nodes_import_db_circuit_state).
STATE_VALUES = {CLOSED: 0, OPEN: 1, HALF_OPEN: 2}


class CircuitBreaker:
    """closed -> open after ``failure_threshold`` failures; open -> half-open once the probe
    delay passes; half-open -> closed on a good probe, -> open (delay doubled) on a bad one."""

    def __init__(self, *, failure_threshold: int, probe_initial_s: float, probe_max_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if failure_threshold < 1 or probe_initial_s <= 0 or probe_max_s < probe_initial_s:
            raise ValueError("failure_threshold >= 1 and 0 < probe_initial_s <= probe_max_s")
        self.failure_threshold = failure_threshold
        self.probe_initial_s, self.probe_max_s = probe_initial_s, probe_max_s
        self.clock = clock
        self.state = CLOSED
        self.failures = 0  # consecutive, while closed
        self.delay_s = probe_initial_s  # the current wait between probes
        self.probe_at = 0.0  # when an open breaker may probe next (clock time)
        self.opened_at: float | None = None  # when the current outage began
        self.last_error: str | None = None

    # ------------------------------------------------------------------ questions

    @property
    def allows_jobs(self) -> bool:
        """May the daemon start (or take) jobs now?"""
        return self.state == CLOSED

    def probe_due(self) -> bool:
        """Open and its delay passed: moves to half-open; the caller must then probe and
        report ``probe_succeeded`` or ``probe_failed``."""
        if self.state != OPEN or self.clock() < self.probe_at:
            return False
        self._to(HALF_OPEN)
        return True

    # ------------------------------------------------------------------ reports

    def record_success(self) -> None:
        """A database operation worked (while closed: the failure streak ends)."""
        if self.state == CLOSED:
            self.failures = 0

    def record_failure(self, error: str) -> None:
        """A database operation failed because the database is unreachable."""
        self.last_error = error
        if self.state != CLOSED:
            return  # already open: the probe decides
        self.failures += 1
        if self.failures >= self.failure_threshold:
            self.delay_s = self.probe_initial_s
            self.opened_at = self.clock()
            self._open()

    def probe_succeeded(self) -> float:
        """half-open -> closed; returns how long the outage lasted (seconds)."""
        outage = self.clock() - (self.opened_at if self.opened_at is not None else self.clock())
        self.failures, self.delay_s, self.opened_at = 0, self.probe_initial_s, None
        self._to(CLOSED)
        return outage

    def probe_failed(self, error: str) -> None:
        """half-open -> open, waiting twice as long (at most ``probe_max_s``) to probe again."""
        self.last_error = error
        self.delay_s = min(self.probe_max_s, self.delay_s * 2)
        self._open()

    # ------------------------------------------------------------------ internals

    def _open(self) -> None:
        self.probe_at = self.clock() + self.delay_s
        self._to(OPEN)

    def _to(self, state: str) -> None:
        # Opening and closing are worth a warning; the probe's own round trips
        # (open <-> half-open) are debug: the daemon logs each failed probe once.
        routine = state == HALF_OPEN or (self.state == HALF_OPEN and state == OPEN)
        if state != self.state:
            log.log(logging.DEBUG if routine else logging.WARNING,
                    "database circuit breaker %s", state, extra={"fields": {
                        "breaker": state, "from": self.state, "failures": self.failures,
                        "nextProbeInS": round(self.delay_s, 2) if state == OPEN else None,
                        "error": self.last_error}})
        self.state = state
