"""The database circuit breaker's state machine, on a fake clock; admission's pause/resume."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from nodes_import.config import ExecutorConfig
from nodes_import.daemon import admission
from nodes_import.daemon.admission import Admission
from nodes_import.daemon.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from nodes_import.errors import ConnectionLostError, StorageError, TransientStorageError


class FakeClock:
    """Seconds that move only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _breaker(clock: FakeClock, threshold: int = 3) -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=threshold, probe_initial_s=1.0, probe_max_s=4.0,
                          clock=clock)


def test_the_breaker_opens_after_the_threshold_of_consecutive_failures_only() -> None:
    breaker = _breaker(FakeClock())
    breaker.record_failure("refused")
    breaker.record_failure("refused")
    breaker.record_success()  # the streak ends
    breaker.record_failure("refused")
    breaker.record_failure("refused")
    assert (breaker.state, breaker.allows_jobs) == (CLOSED, True)
    breaker.record_failure("refused")
    assert (breaker.state, breaker.allows_jobs, breaker.last_error) == (OPEN, False, "refused")


def test_an_open_breaker_probes_only_after_its_delay_and_half_open_starts_no_job() -> None:
    clock = FakeClock()
    breaker = _breaker(clock, threshold=1)
    breaker.record_failure("refused")
    assert not breaker.probe_due()
    clock.now += 0.99
    assert not breaker.probe_due()
    clock.now += 0.01
    assert breaker.probe_due()
    assert (breaker.state, breaker.allows_jobs) == (HALF_OPEN, False)
    assert not breaker.probe_due()  # one probe at a time


def test_failed_probes_double_the_delay_up_to_the_maximum() -> None:
    clock = FakeClock()
    breaker = _breaker(clock, threshold=1)
    breaker.record_failure("refused")
    waits = []
    for _ in range(4):
        start = clock.now
        while not breaker.probe_due():
            clock.now += 0.5
        waits.append(clock.now - start)
        breaker.probe_failed("still refused")
        assert breaker.state == OPEN
    assert waits == [1.0, 2.0, 4.0, 4.0]


def test_a_good_probe_closes_the_breaker_reports_the_outage_and_resets_the_backoff() -> None:
    clock = FakeClock()
    breaker = _breaker(clock, threshold=2)
    breaker.record_failure("a")
    breaker.record_failure("b")
    clock.now += 1.0
    assert breaker.probe_due()
    breaker.probe_failed("c")
    clock.now += 2.0
    assert breaker.probe_due()
    assert breaker.probe_succeeded() == pytest.approx(3.0)
    assert (breaker.state, breaker.allows_jobs, breaker.delay_s) == (CLOSED, True, 1.0)
    breaker.record_failure("d")  # a fresh streak is needed to open again
    assert breaker.state == CLOSED


def test_failures_reported_while_open_do_not_extend_the_wait() -> None:
    clock = FakeClock()
    breaker = _breaker(clock, threshold=1)
    breaker.record_failure("a")
    clock.now += 0.9
    breaker.record_failure("a worker's job failed too")
    clock.now += 0.1
    assert breaker.probe_due()


@pytest.mark.parametrize(("threshold", "initial", "maximum"), [(0, 1.0, 2.0), (1, 3.0, 2.0),
                                                                (1, 0.0, 2.0), (1, -1.0, 2.0)])
def test_nonsense_settings_are_refused(threshold: int, initial: float, maximum: float) -> None:
    with pytest.raises(ValueError) as caught:
        CircuitBreaker(failure_threshold=threshold, probe_initial_s=initial, probe_max_s=maximum)
    assert str(caught.value) == "failure_threshold >= 1 and 0 < probe_initial_s <= probe_max_s"


def test_the_least_settings_are_allowed_and_a_new_breaker_is_closed_with_no_outage() -> None:
    breaker = CircuitBreaker(failure_threshold=1, probe_initial_s=2.0, probe_max_s=2.0)
    assert (breaker.state, breaker.failures, breaker.delay_s, breaker.probe_at,
            breaker.opened_at, breaker.last_error) == (CLOSED, 0, 2.0, 0.0, None, None)
    assert breaker.allows_jobs and not breaker.probe_due()


def test_a_failed_probe_keeps_its_own_error() -> None:
    clock = FakeClock()
    breaker = _breaker(clock, threshold=1)
    breaker.record_failure("refused")
    clock.now += 1.0
    assert breaker.probe_due()
    breaker.probe_failed("timed out")
    assert breaker.last_error == "timed out"


def _events(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str, dict[str, object]]]:
    return [(r.levelno, r.getMessage(), r.fields)  # type: ignore[attr-defined]
            for r in caplog.records if r.name == "nodes_import.daemon.breaker"]


def test_opening_and_closing_are_warnings_with_their_fields_and_the_probes_are_debug(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=2, probe_initial_s=1.234, probe_max_s=10.0,
                             clock=clock)
    with caplog.at_level(logging.DEBUG, logger="nodes_import.daemon.breaker"):
        breaker.record_failure("refused")
        breaker.record_failure("refused")
        clock.now += 1.234
        assert breaker.probe_due()
        breaker.probe_failed("timed out")
        clock.now += 2.468
        assert breaker.probe_due()
        breaker.probe_succeeded()
    name = "database circuit breaker %s"
    assert _events(caplog) == [
        (logging.WARNING, name % OPEN, {"breaker": OPEN, "from": CLOSED, "failures": 2,
                                        "nextProbeInS": 1.23, "error": "refused"}),
        (logging.DEBUG, name % HALF_OPEN, {"breaker": HALF_OPEN, "from": OPEN, "failures": 2,
                                           "nextProbeInS": None, "error": "refused"}),
        (logging.DEBUG, name % OPEN, {"breaker": OPEN, "from": HALF_OPEN, "failures": 2,
                                      "nextProbeInS": 2.47, "error": "timed out"}),
        (logging.DEBUG, name % HALF_OPEN, {"breaker": HALF_OPEN, "from": OPEN, "failures": 2,
                                           "nextProbeInS": None, "error": "timed out"}),
        (logging.WARNING, name % CLOSED, {"breaker": CLOSED, "from": HALF_OPEN, "failures": 0,
                                          "nextProbeInS": None, "error": "timed out"}),
    ]


# ---------------------------------------------------------------- admission


class FakeConsumer:
    """What Admission.steer touches of a JobConsumer."""

    def __init__(self) -> None:
        self.paused = False
        self.calls: list[str] = []

    def pause(self) -> None:
        self.paused = True
        self.calls.append("pause")

    def resume(self) -> None:
        self.paused = False
        self.calls.append("resume")


def _admission(clock: FakeClock, **changes: object) -> Admission:
    executor = dataclasses.replace(ExecutorConfig(queue_capacity=2, breaker_failure_threshold=1),
                                   **changes)
    return Admission(executor, dsn="postgresql://127.0.0.1:1/x", probe_timeout_s=1.0,
                     clock=clock)


def test_only_outages_count_towards_the_breaker_never_refused_data() -> None:
    gate = _admission(FakeClock())
    gate.database_failed(StorageError("value too long for type character varying(255)"))
    gate.database_failed(TransientStorageError("deadlock detected (SQLSTATE 40P01)"))
    assert gate.allows_jobs
    gate.database_failed(ConnectionLostError("database connection failed: refused"))
    assert not gate.allows_jobs
    assert admission.is_outage(ConnectionRefusedError())


def test_consumption_pauses_while_the_breaker_is_open_and_resumes_once_closed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock, consumer = FakeClock(), FakeConsumer()
    gate = _admission(clock)
    gate.steer(consumer, 0)  # type: ignore[arg-type]
    assert consumer.calls == []
    gate.database_failed(ConnectionLostError("database connection failed: refused"))
    gate.steer(consumer, 0)  # type: ignore[arg-type]
    assert consumer.paused and gate.gauge() == 1
    assert gate.readiness() and "circuit breaker open" in gate.readiness()  # type: ignore[operator]

    answers = [StorageError("database connection failed: still refused"), None]

    def probe(dsn: str, *, timeout_s: float) -> None:
        answer = answers.pop(0)
        if answer is not None:
            raise answer

    monkeypatch.setattr(admission.connection, "probe", probe)
    clock.now += 1.0
    gate.check_database()  # fails: open again, twice the wait
    gate.steer(consumer, 0)  # type: ignore[arg-type]
    assert consumer.paused and gate.gauge() == 1
    clock.now += 1.0
    gate.check_database()
    assert gate.gauge() == 1 and answers  # not due yet: no probe
    clock.now += 1.0
    gate.check_database()
    gate.steer(consumer, 0)  # type: ignore[arg-type]
    assert not consumer.paused and gate.gauge() == 0 and gate.readiness() is None
    assert consumer.calls == ["pause", "resume"]


def test_a_full_window_holds_intake_at_once_and_pauses_only_once_it_stays_full() -> None:
    clock, consumer = FakeClock(), FakeConsumer()
    gate = _admission(clock)
    gate.steer(consumer, 2)  # type: ignore[arg-type]
    assert gate.holding(2) and not consumer.paused  # a slot may free within milliseconds
    clock.now += admission.PAUSE_AFTER_S / 2
    gate.steer(consumer, 2)  # type: ignore[arg-type]
    assert not consumer.paused
    clock.now += admission.PAUSE_AFTER_S / 2
    gate.steer(consumer, 2)  # type: ignore[arg-type]
    assert consumer.paused
    gate.steer(consumer, 1)  # type: ignore[arg-type]
    assert not consumer.paused and not gate.holding(1)
    clock.now += 10 * admission.PAUSE_AFTER_S  # full again: the wait starts over
    gate.steer(consumer, 2)  # type: ignore[arg-type]
    assert not consumer.paused
    assert consumer.calls == ["pause", "resume"]


def test_reject_mode_never_holds_intake_or_pauses_for_a_full_window() -> None:
    clock, consumer = FakeClock(), FakeConsumer()
    reject = _admission(clock, backpressure="reject")
    reject.steer(consumer, 5)  # type: ignore[arg-type]
    clock.now += 10 * admission.PAUSE_AFTER_S
    reject.steer(consumer, 5)  # type: ignore[arg-type]
    assert not consumer.paused and not reject.holding(5)
