"""The producer: one idempotent ``Publisher`` (acks=all) per process for dead letters
and ``submit`` (librdkafka spends ~0.5 s before an idempotent producer's first send).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from nodes_import.errors import BrokerError
from nodes_import.kafka import payload
from nodes_import.kafka.clients import create
from nodes_import.kafka.offsets import Headers


class Publisher:
    """One idempotent producer; ``send`` waits for the broker's acknowledgement."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = dict(settings)
        self._producer = create(Producer, self.settings)

    def send(self, topic: str, value: bytes | None, *, key: bytes | None = None,
             headers: Headers | None = None, timeout_s: float = 30.0) -> tuple[int, int]:
        """Produce one message and wait until acks=all; returns (partition, offset)."""
        result: list[Any] = []

        def delivered(err: KafkaError | None, msg: Message) -> None:
            result.append(err if err is not None else (msg.partition(), msg.offset()))

        try:
            self._producer.produce(topic, value=value, key=key, headers=list(headers or []),
                                   on_delivery=delivered)
        except (KafkaException, BufferError) as exc:
            raise BrokerError(f"cannot produce to {topic}: {exc}") from exc
        self._producer.flush(timeout_s)
        if not result:
            raise BrokerError(f"no acknowledgement from Kafka for {topic} within {timeout_s:.0f}s")
        if isinstance(result[0], KafkaError):
            raise BrokerError(f"producing to {topic} failed: {result[0].str()}")
        partition, offset = result[0]
        return int(partition), int(offset)

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued."""
        self._producer.flush(timeout_s)


def submit(publisher: Publisher, topic: str, request: Any, *,
           timeout_s: float = 30.0) -> tuple[int, int]:
    """Produce one NodeExchange (``payload.NodeExchange``) keyed by its jobId; wait at most
    ``timeout_s`` for the acknowledgement."""
    key = request.job_id.encode() if request.job_id else None
    return publisher.send(topic, request.to_json(), key=key,
                          headers=[payload.TYPE_HEADER], timeout_s=timeout_s)
