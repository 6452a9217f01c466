"""The in-flight window's state and transitions, without a broker, a database or workers."""

from __future__ import annotations

import time
from concurrent.futures import Future

from nodes_import import metrics
from nodes_import.daemon.database import MainDatabase
from nodes_import.daemon.window import (
    RETRY_MAX_S,
    RUNNING,
    WAITING,
    Heartbeat,
    Leases,
    Slot,
    Window,
    backoff_s,
)
from nodes_import.jobs import Ending, ImportJob, JobOutcome
from nodes_import.kafka.offsets import Delivery


def _take(window: Window, offset: int, partition: int = 0, job_id: str | None = None) -> Slot:
    slot = window.track(Delivery("jobs", partition, offset, None, b"{}"))
    slot.job = ImportJob(job_id=job_id or f"job-{partition}-{offset}", group_id="g",
                         domain_id="d", reference_ids=("a",))
    window.admit(slot)
    return slot


def _run(window: Window, slot: Slot) -> Future[JobOutcome]:
    future: Future[JobOutcome] = Future()
    window.hold(slot)
    window.run(slot, future, generation=1)
    return future


def test_done_offsets_are_committed_up_to_the_first_message_not_done() -> None:
    window = Window(capacity=8)
    first, second, third = (_take(window, n) for n in (10, 11, 12))
    window.done(second)
    assert window.tracker.to_commit() == {}  # 10 is not done: nothing moves
    window.done(first)
    assert window.tracker.to_commit() == {("jobs", 0): 12}
    assert window.slots == [third] and window.in_flight == 1


def test_a_dropped_slot_leaves_the_window_without_letting_its_offset_be_committed() -> None:
    window = Window(capacity=8)
    slot = _take(window, 10)
    window.drop(slot)
    assert window.slots == [] and window.tracker.to_commit() == {}


def test_a_message_dead_lettered_before_it_joined_the_window_is_still_committed() -> None:
    window = Window(capacity=8)
    slot = window.track(Delivery("jobs", 0, 10, None, b"not json"))
    window.done(slot)
    assert window.tracker.to_commit() == {("jobs", 0): 11}


def test_the_window_is_full_at_capacity_and_admits_a_slot_once() -> None:
    window = Window(capacity=2)
    slot = _take(window, 1)
    window.admit(slot)
    assert not window.full
    _take(window, 2)
    assert window.full and window.in_flight == 2


def test_a_lease_is_held_from_the_hand_over_until_the_slot_leaves() -> None:
    window = Window(capacity=8)
    slot = _take(window, 10)
    future = _run(window, slot)
    assert window.leases.held() == ["job-0-10"] and slot.state == RUNNING
    assert window.finished() == [] and window.futures() == [future]
    future.set_result(JobOutcome("job-0-10", "COMPLETED", ending=Ending.COMPLETED))
    assert window.finished() == [slot]
    window.reaped(slot)
    window.done(slot)
    assert window.leases.held() == [] and window.running == {}


def test_dropping_a_redelivered_copy_keeps_the_running_jobs_lease() -> None:
    window = Window(capacity=8)
    running = _take(window, 10, job_id="same")
    _run(window, running)
    copy = _take(window, 11, job_id="same")
    assert window.first_copy("same") is running
    window.drop(copy)
    assert window.leases.held() == ["same"]


def test_the_backoff_doubles_with_each_failure_up_to_retry_max() -> None:
    window = Window(capacity=8)
    slot = _take(window, 10)
    delays = [window.later(slot) for _ in range(7)]
    assert delays == [0.5, 1.0, 2.0, 4.0, RETRY_MAX_S, RETRY_MAX_S, RETRY_MAX_S]
    assert slot.failures == 7 and slot.not_before > 0
    assert backoff_s(0) == 0.25
    assert window.due(slot.not_before - 0.01) == [] and window.due(slot.not_before) == [slot]
    window.requeue(slot)
    assert (slot.state, slot.not_before) == (WAITING, 0.0)


def test_a_revoke_drops_the_partitions_waiting_work_and_keeps_their_running_jobs() -> None:
    window = Window(capacity=8)
    waiting, running = _take(window, 10), _take(window, 11)
    other = _take(window, 5, partition=1)
    _run(window, running)
    window.revoke([("jobs", 0)])
    assert window.slots == [running, other]
    assert window.idle() == [other] and window.idle([("jobs", 1)]) == [other]
    window.done(running)  # its new owner commits the partition
    assert window.tracker.to_commit() == {}
    assert waiting not in window.slots


def test_a_slots_log_fields_name_its_message_and_once_parsed_its_job() -> None:
    window = Window(capacity=8)
    slot = window.track(Delivery("jobs", 2, 10, None, b"{}"))
    assert slot.ctx() == {"topic": "jobs", "partition": 2, "offset": 10}
    slot.job = ImportJob(job_id="j1", group_id="g", domain_id="d", reference_ids=("a",))
    assert slot.ctx() == {"topic": "jobs", "partition": 2, "offset": 10, "jobId": "j1",
                          "groupId": "g", "domainId": "d"}


def test_the_first_copy_of_a_job_is_its_earliest_slot_and_none_for_an_unknown_job() -> None:
    window = Window(capacity=8)
    window.admit(window.track(Delivery("jobs", 0, 9, None, b"not json")))  # no job
    first = _take(window, 10, job_id="a")
    _take(window, 11, job_id="b")
    _take(window, 12, job_id="a")
    assert window.first_copy("a") is first
    assert window.first_copy("b") is window.slots[2]
    assert window.first_copy("c") is None


def test_reaping_a_slot_that_never_ran_changes_nothing() -> None:
    window = Window(capacity=8)
    running, waiting = _take(window, 10), _take(window, 11)
    _run(window, running)
    window.reaped(waiting)
    assert list(window.running) == ["job-0-10"]
    window.reaped(running)
    assert window.running == {}


def test_a_retry_waits_its_backoff_from_now() -> None:
    window = Window(capacity=8)
    slot = _take(window, 10)
    before = time.monotonic()
    delay = window.later(slot)
    assert slot.not_before >= before + delay
    assert window.due(before) == []


def test_a_done_message_is_counted_as_processed_for_its_topic() -> None:
    def processed() -> float:
        value = metrics.registry().get_sample_value(
            "kafka_consumer_messages_processed_total", {"topic": "jobs-window-test"})
        return value or 0.0

    window = Window(capacity=8)
    slot = window.track(Delivery("jobs-window-test", 0, 1, None, b"{}"))
    before = processed()
    window.done(slot)
    assert processed() == before + 1


def test_the_lease_heartbeat_is_a_named_daemon_thread() -> None:
    beat = Heartbeat(Leases(), MainDatabase("postgresql://", connect_timeout_s=1), "a:1", 5.0)
    assert (beat.name, beat.daemon, beat.owner, beat.interval_s) == (
        "lease-heartbeat", True, "a:1", 5.0)
