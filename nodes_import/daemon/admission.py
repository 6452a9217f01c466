"""Admission (parent side): may the daemon take and start jobs now?

Two things say no, and both answer by pausing consumption (polling goes on, so the
daemon stays in its group; paused partitions fetch nothing):

- the in-flight window is full (backpressure ``pause``; ``reject`` instead FAILs the
  overflow, which the daemon does itself);
- the database circuit breaker is not closed (``breaker.py``): jobs would only burn
  their retries against a database that keeps failing. While it is open the daemon
  probes the database with backoff and starts nothing; taken messages wait in the
  window and start, in order, once a probe answers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from nodes_import.config import ExecutorConfig
from nodes_import.daemon.breaker import CLOSED, STATE_VALUES, CircuitBreaker
from nodes_import.errors import ConnectionLostError, StorageError
from nodes_import.kafka.consumer import JobConsumer
from nodes_import.logs import redact_dsn
from nodes_import.store import connection

log = logging.getLogger(__name__)

# A full window (``pause`` mode) pauses consumption only once it has stayed full this long;
# until then the daemon takes no message and waits for a job to finish. A pause makes
# librdkafka drop the messages it has fetched and fetch them again on resume: a window
# that frees a slot within milliseconds (a burst of small jobs) paid ~40-60 ms for every
# fill on Tansu. Well under max.poll.interval.ms, so the daemon stays in its group.
PAUSE_AFTER_S = 0.5


def is_outage(exc: BaseException) -> bool:
    """The database is unreachable (not: the data was refused). Only these count towards
    opening the breaker: a bad row must not stop the service."""
    return isinstance(exc, (OSError, ConnectionLostError))


class Admission:
    """The window's backpressure and the database breaker, deciding pause and resume."""

    def __init__(self, executor: ExecutorConfig, *, dsn: str, probe_timeout_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = executor.queue_capacity
        self.reject_mode = executor.backpressure == "reject"
        self.dsn, self.probe_timeout_s = dsn, probe_timeout_s
        self.clock = clock
        self._full_since: float | None = None  # when the window last became full
        self.breaker = CircuitBreaker(
            failure_threshold=executor.breaker_failure_threshold,
            probe_initial_s=executor.breaker_probe_initial_ms / 1000.0,
            probe_max_s=executor.breaker_probe_max_ms / 1000.0, clock=clock)

    @property
    def allows_jobs(self) -> bool:
        """Jobs may be claimed and started (the breaker is closed)."""
        return self.breaker.allows_jobs

    def full(self, in_flight: int) -> bool:
        """The window holds ``capacity`` messages."""
        return in_flight >= self.capacity

    def holding(self, in_flight: int) -> bool:
        """Take no message now: the window is full in ``pause`` mode."""
        return self.full(in_flight) and not self.reject_mode

    def steer(self, consumer: JobConsumer, in_flight: int) -> None:
        """Pause when the window has been full for ``PAUSE_AFTER_S`` (``pause`` mode) or
        the breaker is not closed; resume when neither holds."""
        now = self.clock()
        if not self.holding(in_flight):
            self._full_since = None
        elif self._full_since is None:
            self._full_since = now
        hold = (self._full_since is not None and now - self._full_since >= PAUSE_AFTER_S) \
            or not self.allows_jobs
        if hold and not consumer.paused:
            consumer.pause()
            why = "database circuit breaker" if not self.allows_jobs else "window full"
            log.debug(f"{why}: partitions paused", extra={"fields": {
                "inFlight": in_flight, "breaker": self.breaker.state}})
        elif not hold and consumer.paused:
            consumer.resume()
            log.debug("partitions resumed", extra={"fields": {"inFlight": in_flight}})

    def database_failed(self, exc: BaseException) -> None:
        """Report a database error the daemon or a worker met (outages only count)."""
        if is_outage(exc):
            self.breaker.record_failure(str(exc))

    def database_ok(self) -> None:
        """Report a database operation that worked."""
        self.breaker.record_success()

    def check_database(self) -> bool:
        """While open, probe the database when the backoff says so (main thread: one
        connection attempt, bounded by the connect timeout). True when it just closed."""
        if not self.breaker.probe_due():
            return False
        try:
            connection.probe(self.dsn, timeout_s=self.probe_timeout_s)
        except (StorageError, OSError) as exc:
            self.breaker.probe_failed(str(exc))
            log.info("database probe failed", extra={"fields": {
                "error": str(exc), "nextProbeInS": round(self.breaker.delay_s, 2)}})
            return False
        outage = self.breaker.probe_succeeded()
        log.warning("database answers again: jobs start", extra={"fields": {
            "outageS": round(outage, 2)}})
        return True

    def readiness(self) -> str | None:
        """Why the daemon is not ready on the breaker's account (None: closed)."""
        breaker = self.breaker
        if breaker.state == CLOSED:
            return None
        return redact_dsn(f"database circuit breaker {breaker.state}: no job starts until "
                          f"the database answers (last error: {breaker.last_error})")

    def gauge(self) -> int:
        """nodes_import_db_circuit_state."""
        return STATE_VALUES[self.breaker.state]
