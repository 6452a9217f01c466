"""``Endings`` carrying out decisions on a window, with a fake broker and database: the log
lines, the counters, the breaker and the offsets each decision leads to."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from nodes_import.config import ExecutorConfig
from nodes_import.daemon.admission import Admission
from nodes_import.daemon.decisions import (
    DIED_ELSEWHERE,
    DIED_HERE,
    INTERRUPTED,
    DeadLetter,
    Done,
    Drop,
    Fail,
    Retry,
)
from nodes_import.daemon.endings import Endings
from nodes_import.daemon.window import DEAD_LETTER, RUNNING, WAITING, Slot, Window
from nodes_import.errors import BrokerError, ConnectionLostError
from nodes_import.jobs import ImportJob
from nodes_import.kafka import deadletter as dl
from nodes_import.kafka.offsets import Delivery

FAILURE = dl.Failure(dl.STAGE_IMPORT, "bad file", "nodes_import.errors.SourceError",
                     job_id="job-1")


class FakeWriter:
    """Dead letters sent, or a broker that does not acknowledge them."""

    def __init__(self) -> None:
        self.sent: list[tuple[Delivery, dl.Failure]] = []
        self.down = False

    def send(self, delivery: Delivery, failure: dl.Failure) -> None:
        if self.down:
            raise BrokerError("not acknowledged")
        self.sent.append((delivery, failure))


class DownDatabase:
    """A database that is away."""

    @contextmanager
    def conn(self) -> Iterator[Any]:
        raise ConnectionLostError("connection refused")
        yield


@pytest.fixture()
def window() -> Window:
    return Window(capacity=8)


@pytest.fixture()
def writer() -> FakeWriter:
    return FakeWriter()


@pytest.fixture()
def admission() -> Admission:
    return Admission(ExecutorConfig(breaker_failure_threshold=2),
                     dsn="postgresql://127.0.0.1:1/x", probe_timeout_s=1.0)


@pytest.fixture()
def endings(window: Window, admission: Admission, writer: FakeWriter) -> Endings:
    return Endings(window, admission, DownDatabase(), writer,  # type: ignore[arg-type]
                   max_job_crashes=3)


def _running(window: Window) -> Slot:
    slot = window.track(Delivery("jobs", 0, 42, None, b"{}"))
    slot.job = ImportJob(job_id="job-1", group_id="g", domain_id="d", reference_ids=("a",))
    window.admit(slot)
    slot.state = RUNNING
    window.hold(slot)
    return slot


def _events(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.name, r.getMessage()) for r in caplog.records]


def test_done_lets_the_offset_be_committed_and_reports_the_database_answered(
        endings: Endings, window: Window, admission: Admission) -> None:
    slot = _running(window)
    admission.breaker.record_failure("refused")
    endings.carry_out(slot, Done())
    assert window.slots == [] and window.tracker.to_commit() == {("jobs", 0): 43}
    assert admission.breaker.failures == 0 and window.leases.held() == []


def test_a_dead_letter_acknowledged_is_done(
        endings: Endings, window: Window, writer: FakeWriter) -> None:
    slot = _running(window)
    endings.carry_out(slot, DeadLetter(FAILURE))
    assert writer.sent == [(slot.delivery, FAILURE)]
    assert window.tracker.to_commit() == {("jobs", 0): 43}


def test_a_dead_letter_not_acknowledged_stays_in_the_window_and_is_retried_later(
        endings: Endings, window: Window, writer: FakeWriter,
        caplog: pytest.LogCaptureFixture) -> None:
    slot = _running(window)
    writer.down = True
    with caplog.at_level(logging.WARNING):
        endings.carry_out(slot, DeadLetter(FAILURE))
    assert (slot.state, slot.failure, slot.failures) == (DEAD_LETTER, FAILURE, 1)
    assert window.slots == [slot] and window.tracker.to_commit() == {}
    assert _events(caplog) == [("nodes_import.daemon", "dead letter not acknowledged; retrying")]


def test_a_failure_that_cannot_be_recorded_leaves_the_job_waiting_counted_for_the_breaker(
        endings: Endings, window: Window, admission: Admission, writer: FakeWriter,
        caplog: pytest.LogCaptureFixture) -> None:
    slot = _running(window)
    with caplog.at_level(logging.WARNING):
        endings.carry_out(slot, Fail("gone", "nodes_import.errors.ConnectionLostError",
                                     outage=True))
    assert (slot.state, slot.outage_resumes, slot.failures) == (WAITING, 1, 1)
    assert writer.sent == [] and admission.breaker.failures == 1
    assert _events(caplog) == [("nodes_import.daemon",
                                "cannot record the failure; retrying the job")]


def test_an_outage_retry_waits_with_backoff_and_counts_for_the_breaker(
        endings: Endings, window: Window, admission: Admission,
        caplog: pytest.LogCaptureFixture) -> None:
    slot = _running(window)
    with caplog.at_level(logging.WARNING):
        endings.carry_out(slot, Retry(INTERRUPTED, "connection refused", outage=True))
    assert (slot.state, slot.outage_resumes, slot.failures) == (WAITING, 1, 1)
    assert slot.not_before > 0 and admission.breaker.failures == 1
    [record] = caplog.records
    assert (record.name, record.getMessage()) == ("nodes_import.daemon", INTERRUPTED)
    assert record.fields["error"] == "connection refused"  # type: ignore[attr-defined]


def test_a_lost_lease_retry_waits_with_backoff_without_counting(
        endings: Endings, window: Window, admission: Admission) -> None:
    slot = _running(window)
    endings.carry_out(slot, Retry(INTERRUPTED, "lease lost"))
    assert (slot.state, slot.outage_resumes, slot.failures) == (WAITING, 0, 1)
    assert admission.breaker.failures == 0


def test_a_crash_retry_goes_back_to_waiting_at_once_counting_the_crash(
        endings: Endings, window: Window, caplog: pytest.LogCaptureFixture) -> None:
    slot = _running(window)
    with caplog.at_level(logging.WARNING):
        endings.carry_out(slot, Retry(DIED_HERE, crash=True))
        endings.carry_out(slot, Retry(DIED_ELSEWHERE))
    assert (slot.state, slot.not_before, slot.crashes, slot.failures) == (WAITING, 0.0, 1, 0)
    assert _events(caplog) == [("nodes_import.daemon", DIED_HERE),
                               ("nodes_import.daemon", DIED_ELSEWHERE)]
    assert caplog.records[0].fields["crashes"] == 1  # type: ignore[attr-defined]
    assert "crashes" not in caplog.records[1].fields  # type: ignore[attr-defined]


def test_a_cancelled_call_goes_back_to_waiting_silently(
        endings: Endings, window: Window, caplog: pytest.LogCaptureFixture) -> None:
    slot = _running(window)
    with caplog.at_level(logging.DEBUG):
        endings.carry_out(slot, Retry())
    assert (slot.state, slot.not_before) == (WAITING, 0.0) and caplog.records == []


def test_a_drop_leaves_the_window_without_committing_and_releases_the_lease(
        endings: Endings, window: Window) -> None:
    slot = _running(window)
    endings.carry_out(slot, Drop())
    assert window.slots == [] and window.tracker.to_commit() == {}
    assert window.leases.held() == []
