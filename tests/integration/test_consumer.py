"""The daemon's Kafka consumer (``kafka/consumer.py``) against the real broker: pause and
resume across rebalances, where librdkafka keeps a partition's pause state after the
partition is revoked."""

from __future__ import annotations

import uuid

from confluent_kafka import Consumer

from nodes_import.config import KafkaConfig
from nodes_import.kafka.clients import client_settings
from nodes_import.kafka.consumer import JobConsumer
from tests.fixtures.kafka import TEST_CONSUMER, KafkaTest, wait_until


def _assigned(consumer: Consumer) -> set[int]:
    return {tp.partition for tp in consumer.assignment()}


def test_a_partition_revoked_while_paused_and_given_back_after_the_resume_is_consumed(
        kafka: KafkaTest) -> None:
    # The soak's fourth finding (seed 15): a daemon paused (breaker open), lost partitions
    # in a rebalance, resumed while they were elsewhere, and got them back still paused by
    # librdkafka: nothing consumed from them again. Here: A holds p0 and p1 and pauses; B
    # joins and takes one (A loses it while paused); A resumes (its one partition); B leaves
    # and A gets both back: both must be fetched.
    topic = kafka.create_topic(partitions=2)
    settings = client_settings(KafkaConfig(consumer_properties=TEST_CONSUMER), "consumer",
                               bootstrap=kafka.bootstrap, group_id=kafka.group_id)
    a = JobConsumer(settings, kafka.pattern, on_assign=lambda tps: None,
                    on_revoke=lambda tps: None)
    b = Consumer({"bootstrap.servers": kafka.bootstrap, **TEST_CONSUMER,
                  "group.id": kafka.group_id})
    a.open(10)
    try:
        wait_until(lambda: a.poll(0.1) is None and _assigned(a.consumer) == {0, 1}, 20,
                   "A assigned both partitions")
        a.pause()
        b.subscribe([topic])

        def split() -> bool:
            assert a.poll(0.05) is None, "a paused consumer delivered a message"
            b.poll(0.05)
            return len(_assigned(a.consumer)) == 1 and len(_assigned(b)) == 1
        wait_until(split, 30, "the partitions split between A and B")
        lost = ({0, 1} - _assigned(a.consumer)).pop()
        a.resume()
        b.close()

        def rejoined() -> bool:
            a.poll(0.05)
            return _assigned(a.consumer) == {0, 1}
        wait_until(rejoined, 30, "A assigned both partitions again")
        marks = {p: f"after-rejoin-{p}-{uuid.uuid4().hex[:6]}".encode() for p in (0, 1)}
        for p, value in marks.items():
            kafka.send(value, partition=p)
        seen: set[bytes] = set()

        def both() -> bool:
            delivery = a.poll(0.1)
            if delivery is not None:
                seen.add(delivery.value or b"")
            return set(marks.values()) <= seen
        wait_until(both, 20, f"a message on each partition (p{lost} was revoked while paused)")
        assert not a.paused
    finally:
        a.close()
