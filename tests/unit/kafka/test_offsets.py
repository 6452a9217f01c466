"""The commit position: the first offset of a partition whose job is not done yet."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nodes_import.config import KafkaConfig
from nodes_import.kafka.clients import client_settings, redacted
from nodes_import.kafka.offsets import OffsetTracker

TP = ("jobs-users", 0)


def test_nothing_is_committed_before_the_first_job_is_done() -> None:
    tracker = OffsetTracker()
    for offset in (5, 6, 7):
        tracker.add(TP, offset)
    tracker.done(TP, 6)
    tracker.done(TP, 7)
    assert tracker.to_commit() == {}
    assert tracker.in_flight() == 1


def test_a_slow_job_holds_back_the_commit_of_faster_ones_behind_it() -> None:
    tracker = OffsetTracker()
    for offset in range(4):
        tracker.add(TP, offset)
    tracker.done(TP, 0)
    tracker.done(TP, 2)
    assert tracker.to_commit() == {TP: 1}
    tracker.done(TP, 1)
    assert tracker.to_commit() == {TP: 3}


def test_a_committed_position_is_not_offered_again() -> None:
    tracker = OffsetTracker()
    tracker.add(TP, 0)
    tracker.done(TP, 0)
    tracker.committed(tracker.to_commit())
    assert tracker.to_commit() == {}


def test_partitions_are_independent_and_a_revoked_one_is_forgotten() -> None:
    other = ("jobs-users", 1)
    tracker = OffsetTracker()
    tracker.add(TP, 10)
    tracker.add(other, 3)
    tracker.done(other, 3)
    assert tracker.to_commit() == {other: 4}
    assert tracker.to_commit([TP]) == {}
    tracker.forget([other])
    tracker.done(other, 3)  # a job of a revoked partition finishing late: ignored
    assert tracker.to_commit() == {}


@given(st.integers(1, 40).flatmap(lambda n: st.permutations(list(range(n)))))
def test_in_any_completion_order_the_position_is_the_first_offset_not_done(
        order: list[int]) -> None:
    tracker = OffsetTracker()
    for offset in range(len(order)):
        tracker.add(TP, offset)
    done: set[int] = set()
    for offset in order:
        tracker.done(TP, offset)
        done.add(offset)
        first_open = next(o for o in range(len(order) + 1) if o not in done)
        expected = {TP: first_open} if first_open > 0 else {}
        assert tracker.to_commit() == expected


def test_user_properties_pass_through_but_cannot_turn_auto_commit_on() -> None:
    kafka = KafkaConfig(bootstrap_servers="b:9092", consumer_properties={
        "security.protocol": "SASL_SSL", "sasl.password": "s3cret",
        "enable.auto.commit": True, "auto.offset.reset": "latest"})
    settings = client_settings(kafka, "consumer")
    assert settings["security.protocol"] == "SASL_SSL" and settings["sasl.password"] == "s3cret"
    assert settings["auto.offset.reset"] == "latest"
    assert settings["enable.auto.commit"] is False
    assert settings["enable.auto.offset.store"] is False
    assert redacted(settings)["sasl.password"] == "***" and "logger" not in redacted(settings)
