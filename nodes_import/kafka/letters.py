"""The dead-letter topic read for a person (``dlq list``, ``dlq show``): each letter with its
error headers decoded (``deadletter``'s ``__nodes-import.errors.*``).

Reads by assignment with a throwaway group id and commits nothing: no consumer offset moves,
neither the daemon's nor the one that records what ``dlq replay`` handled.
"""

from __future__ import annotations

import contextlib
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from nodes_import.errors import BrokerError
from nodes_import.kafka import deadletter as dl
from nodes_import.kafka.consumer import TopicReader
from nodes_import.kafka.offsets import Delivery

# A read of the topic ends this long after its last message once every partition's end was
# reached (as a replay's read).
IDLE_S = dl.REPLAY_IDLE_S


@dataclass(frozen=True)
class Letter:
    """One dead letter: where it is, why it is there, and the original message."""

    partition: int
    offset: int
    timestamp: str | None  # the error header's ISO 8601 time, else the message's
    stage: str | None
    error_class: str | None
    message: str | None
    job_id: str | None
    counts: Any  # the job's figures at failure (JSON), None when absent
    origin: str | None  # topic/partition/offset of the original message
    consumer_group: str | None
    instance: str | None  # the daemon (host:pid) that gave up
    stack_trace: str | None
    key: str | None
    value: str | None
    headers: list[tuple[str, str]] = field(default_factory=list)  # the original ones

    @classmethod
    def of(cls, delivery: Delivery) -> Letter:
        """Decode a delivery of the dead-letter topic (header values as UTF-8 text)."""
        info = dl.header_map(delivery.headers)
        counts: Any = info.get(dl.H_COUNTS)
        if counts is not None:
            with contextlib.suppress(orjson.JSONDecodeError):  # else: shown as the text
                counts = orjson.loads(counts)
        origin = None
        if dl.H_TOPIC in info:
            origin = (f"{info[dl.H_TOPIC]}/{info.get(dl.H_PARTITION, '?')}/"
                      f"{info.get(dl.H_OFFSET, '?')}")
        stamp = info.get(dl.H_TIMESTAMP)
        if stamp is None and delivery.timestamp_ms is not None:
            stamp = datetime.fromtimestamp(delivery.timestamp_ms / 1000, UTC).isoformat(
                timespec="milliseconds")
        return cls(
            partition=delivery.partition, offset=delivery.offset, timestamp=stamp,
            stage=info.get(dl.H_STAGE), error_class=info.get(dl.H_CLASS),
            message=info.get(dl.H_MESSAGE), job_id=info.get(dl.H_JOB_ID), counts=counts,
            origin=origin, consumer_group=info.get(dl.H_GROUP), instance=info.get(dl.H_INSTANCE),
            stack_trace=info.get(dl.H_STACKTRACE), key=_text(delivery.key),
            value=_text(delivery.value),
            headers=[(k, _text(v) or "") for k, v in delivery.headers
                     if not k.startswith(dl.PREFIX)])


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", "replace")


def _reader(settings: Mapping[str, Any], topic: str) -> TopicReader:
    """A reader whose group is never used to commit (a fresh name: no offsets to move)."""
    return TopicReader(settings, topic, f"nodes-import-dlq-reader-{uuid.uuid4().hex[:8]}")


def latest(settings: Mapping[str, Any], topic: str, *, limit: int,
           timeout_s: float) -> list[Letter]:
    """The ``limit`` most recent letters of ``topic``, newest first. The topic is read
    through, holding at most ``limit`` letters per partition."""
    kept: dict[int, deque[Delivery]] = {}
    try:
        with _reader(settings, topic) as reader:
            for delivery in reader.iter_to_end(timeout_s=timeout_s, idle_s=IDLE_S):
                kept.setdefault(delivery.partition, deque(maxlen=limit)).append(delivery)
    except BrokerError as exc:
        raise BrokerError(f"cannot read the dead-letter topic {topic}: {exc}") from exc
    letters = [Letter.of(d) for queue in kept.values() for d in queue]
    letters.sort(key=lambda x: (x.timestamp or "", x.partition, x.offset), reverse=True)
    return letters[:limit]


def at(settings: Mapping[str, Any], topic: str, partition: int, offset: int, *,
       timeout_s: float) -> Letter | None:
    """The letter at ``partition``/``offset`` (None: there is none)."""
    try:
        with _reader(settings, topic) as reader:
            delivery = reader.read_at(partition, offset, timeout_s=timeout_s)
    except BrokerError as exc:
        raise BrokerError(f"cannot read the dead-letter topic {topic}: {exc}") from exc
    return None if delivery is None else Letter.of(delivery)


def of_job(settings: Mapping[str, Any], topic: str, job_id: str, *,
           timeout_s: float) -> list[Letter]:
    """Every letter of ``job_id`` (dead letters are at-least-once: a job may have several),
    oldest first."""
    found: list[Letter] = []
    try:
        with _reader(settings, topic) as reader:
            for delivery in reader.iter_to_end(timeout_s=timeout_s, idle_s=IDLE_S):
                if dl.header_map(delivery.headers).get(dl.H_JOB_ID) == job_id:
                    found.append(Letter.of(delivery))
    except BrokerError as exc:
        raise BrokerError(f"cannot read the dead-letter topic {topic}: {exc}") from exc
    return sorted(found, key=lambda x: (x.timestamp or "", x.partition, x.offset))
