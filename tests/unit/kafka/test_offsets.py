"""The commit position: the first offset of a partition whose job is not done yet."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nodes_import.config import KafkaConfig
from nodes_import.kafka.clients import client_settings, redacted
from nodes_import.kafka.offsets import Delivery, OffsetTracker

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


def test_forgetting_a_partition_drops_its_messages_in_flight_and_an_unknown_one_is_fine() -> None:
    tracker = OffsetTracker()
    other = ("jobs-users", 1)
    for offset in (5, 6):
        tracker.add(TP, offset)
    tracker.add(other, 9)
    tracker.forget([TP, ("jobs-users", 7)])  # partition 7 was never seen here
    assert tracker.in_flight() == 1
    tracker.done(TP, 5)  # a job of the revoked partition ends: its new owner commits it
    assert tracker.to_commit() == {}


def test_a_partition_assigned_again_commits_its_positions_afresh() -> None:
    tracker = OffsetTracker()
    tracker.add(TP, 5)
    tracker.done(TP, 5)
    tracker.committed(tracker.to_commit())
    assert tracker.to_commit() == {}
    tracker.forget([TP])
    # back again; the group's committed offset may since have been moved back: offset 5
    # comes again and its position must be committed, not taken for the old commit
    tracker.add(TP, 5)
    tracker.done(TP, 5)
    assert tracker.to_commit() == {TP: 6}


class _Message:
    """What ``Delivery.of`` reads of a confluent-kafka message (its accessors)."""

    def __init__(self, *, partition: int | None, offset: int | None, headers: object,
                 timestamp: tuple[int, int]) -> None:
        self._partition, self._offset = partition, offset
        self._headers, self._timestamp = headers, timestamp

    def topic(self) -> str:
        return "jobs-users"

    def partition(self) -> int | None:
        return self._partition

    def offset(self) -> int | None:
        return self._offset

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b"{}"

    def headers(self) -> object:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return self._timestamp


def test_a_delivery_copies_every_field_of_the_message_and_encodes_text_headers() -> None:
    msg = _Message(partition=3, offset=42, headers=[("a", b"1"), ("b", "two"), ("c", None)],
                   timestamp=(1, 1_700_000_000_000))  # TIMESTAMP_CREATE_TIME
    got = Delivery.of(msg)  # type: ignore[arg-type]
    assert got == Delivery("jobs-users", 3, 42, b"k", b"{}",
                           [("a", b"1"), ("b", b"two"), ("c", None)], 1_700_000_000_000)
    assert got.tp == ("jobs-users", 3)


def test_a_delivery_of_a_message_without_headers_partition_or_timestamp() -> None:
    for headers in (None, {}):
        msg = _Message(partition=None, offset=None, headers=headers,
                       timestamp=(0, -1))  # TIMESTAMP_NOT_AVAILABLE
        assert Delivery.of(msg) == Delivery(  # type: ignore[arg-type]
            "jobs-users", 0, 0, b"k", b"{}", [], None)
    msg = _Message(partition=1, offset=2, headers={"x": "y"}, timestamp=(2, 5))
    assert Delivery.of(msg).headers == [("x", b"y")]  # type: ignore[arg-type]
