"""Dead letters (parent side): what a rejected message or a FAILED job carries, and replay.

A dead letter is the original message (key, value, headers) plus ``__TypeId__`` and the
error-context headers below, in the spirit of Kafka Connect's ``__connect.errors.*``, so
an operator can understand and replay it without the logs. Header values are UTF-8 text.

``replay`` re-publishes dead letters to the topic they came from, without the error
headers and with ``__nodes-import.replayed-from``; ``new_job_id`` swaps the payload's
``jobId`` so a job that FAILED under its old id runs again. What was replayed is kept as
the committed offsets of a consumer group of its own (``replay_group``): each partition's
offset moves past the letters handled in a row from where the last replay stopped, so the
next replay starts after them; a letter left out (another ``job_id``, past ``limit``)
stops the offset there, to be replayed later.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from nodes_import.errors import BrokerError, PayloadError
from nodes_import.jobs import JobRow
from nodes_import.kafka import payload
from nodes_import.kafka.consumer import TopicReader
from nodes_import.kafka.offsets import Delivery, Headers
from nodes_import.kafka.producer import Publisher

log = logging.getLogger(__name__)

PREFIX = "__nodes-import.errors."
H_TOPIC = PREFIX + "topic"
H_PARTITION = PREFIX + "partition"
H_OFFSET = PREFIX + "offset"
H_STAGE = PREFIX + "stage"  # parse | validate | backpressure | import
H_CLASS = PREFIX + "exception.class.name"
H_MESSAGE = PREFIX + "exception.message"
H_STACKTRACE = PREFIX + "exception.stacktrace"
H_JOB_ID = PREFIX + "job.id"
H_COUNTS = PREFIX + "job.counts"  # JSON: status, total, success, failed, rowsCommitted
H_TIMESTAMP = PREFIX + "timestamp"  # ISO 8601 UTC
H_GROUP = PREFIX + "consumer.group"
H_INSTANCE = PREFIX + "instance"  # host:pid of the daemon that gave up
TYPE_ID = payload.TYPE_ID_HEADER  # the message format's type header, kept on dead letters
REPLAYED_FROM = "__nodes-import.replayed-from"  # dlq-topic/partition/offset

STAGE_BACKPRESSURE = "backpressure"
STAGE_IMPORT = "import"
# Stack traces past this are cut (Kafka messages default to 1 MB in all).
MAX_TRACE_CHARS = 16_000


def instance_name() -> str:
    """This daemon process: ``host:pid`` (job_status.claimed_by)."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Failure:
    """Why a message is dead-lettered."""

    stage: str
    message: str
    error_class: str
    stack_trace: str | None = None
    job_id: str | None = None
    counts: Mapping[str, Any] | None = None


def counts_of(row: JobRow | None) -> dict[str, Any]:
    """The job's figures at failure, from its job_status row (None each: no row)."""
    if row is None:
        return dict.fromkeys(("status", "total", "success", "failed", "rowsCommitted",
                              "attempts"))
    return {"status": row.status, "total": row.total_nodes, "success": row.success_count,
            "failed": row.failed_count, "rowsCommitted": row.rows_committed,
            "attempts": row.attempts}


def _original(headers: Headers) -> Headers:
    """The headers without those a dead letter or a replay added (error context, origin)."""
    return [(k, v) for k, v in headers if not k.startswith(PREFIX) and k != REPLAYED_FROM]


def headers_for(delivery: Delivery, failure: Failure, *, group_id: str) -> Headers:
    """The original headers (stale error headers dropped), then the error context."""
    kept = _original(delivery.headers)
    if not any(k == TYPE_ID for k, _ in kept):
        kept.append(payload.TYPE_HEADER)
    context = {
        H_TOPIC: delivery.topic, H_PARTITION: str(delivery.partition),
        H_OFFSET: str(delivery.offset), H_STAGE: failure.stage, H_CLASS: failure.error_class,
        H_MESSAGE: failure.message,
        H_TIMESTAMP: datetime.now(UTC).isoformat(timespec="milliseconds"),
        H_GROUP: group_id, H_INSTANCE: instance_name(),
    }
    if failure.stack_trace:
        context[H_STACKTRACE] = failure.stack_trace[-MAX_TRACE_CHARS:]
    if failure.job_id:
        context[H_JOB_ID] = failure.job_id
    if failure.counts is not None:
        context[H_COUNTS] = orjson.dumps(dict(failure.counts), default=str).decode()
    return kept + [(k, v.encode()) for k, v in context.items()]


def header_map(headers: Headers) -> dict[str, str]:
    """Headers as text, the last value of a repeated key winning."""
    return {k: (v or b"").decode("utf-8", "replace") for k, v in headers}


class DeadLetterWriter:
    """Produces dead letters to ``topic`` and waits for each acknowledgement."""

    def __init__(self, publisher: Publisher, topic: str, group_id: str) -> None:
        self.publisher, self.topic, self.group_id = publisher, topic, group_id

    def send(self, delivery: Delivery, failure: Failure) -> None:
        """Dead-letter one message; raises ``BrokerError`` if Kafka does not take it."""
        self.publisher.send(self.topic, delivery.value, key=delivery.key,
                            headers=headers_for(delivery, failure, group_id=self.group_id))
        log.warning("message dead-lettered", extra={"fields": {
            "jobId": failure.job_id, "stage": failure.stage, "error": failure.message,
            "topic": delivery.topic, "partition": delivery.partition,
            "offset": delivery.offset, "dlq": self.topic}})


# ------------------------------------------------------------------------------ replay

# A DLQ read ends after this long without a message once every partition was reached.
REPLAY_IDLE_S = 0.5


def replay_group(group_id: str) -> str:
    """The consumer group whose committed offsets record what ``dlq replay`` handled."""
    return f"{group_id}-dlq-replay"


def _reader(settings: Mapping[str, Any], topic: str, group: str | None) -> TopicReader:
    return TopicReader(settings, topic,
                       group or f"nodes-import-dlq-reader-{uuid.uuid4().hex[:8]}")


def replayed_up_to(settings: Mapping[str, Any], topic: str, group: str, *,
                   timeout_s: float) -> dict[int, int]:
    """Per partition of ``topic``, the first offset a replay has not handled yet (0: none)."""
    try:
        with _reader(settings, topic, group) as reader:
            return reader.committed(timeout_s=timeout_s)
    except BrokerError as exc:
        raise BrokerError(f"cannot read what was replayed from {topic}: {exc}") from exc


def mark_replayed(settings: Mapping[str, Any], topic: str, group: str,
                  offsets: Mapping[int, int], *, timeout_s: float) -> None:
    """Record ``offsets`` (partition -> next offset to replay) as the group's commits."""
    if not offsets:
        return
    try:
        with _reader(settings, topic, group) as reader:
            reader.commit(offsets)
    except BrokerError as exc:
        raise BrokerError(f"cannot record what was replayed from {topic}: {exc}") from exc


def read_letters(settings: Mapping[str, Any], topic: str, *, timeout_s: float,
                 idle_s: float = REPLAY_IDLE_S,
                 start: Mapping[int, int] | None = None) -> list[Delivery]:
    """The dead letters on ``topic`` from ``start`` (partition -> offset; default: the
    beginning) to the end. Reads by assignment: no group membership, nothing committed."""
    try:
        with _reader(settings, topic, None) as reader:
            return reader.read_to_end(timeout_s=timeout_s, idle_s=idle_s, start=start)
    except BrokerError as exc:
        raise BrokerError(f"cannot read the dead-letter topic {topic}: {exc}") from exc


@dataclass(frozen=True)
class Replayed:
    """One re-published dead letter."""

    job_id: str | None
    topic: str
    partition: int
    offset: int
    new_job_id: str | None


def handled_up_to(letters: list[Delivery], handled: set[tuple[int, int]],
                  start: Mapping[int, int]) -> dict[int, int]:
    """Per partition, the offset after the letters handled in a row from its first letter
    (partitions whose first letter was not handled are left out: nothing to record)."""
    out: dict[int, int] = {}
    blocked: set[int] = set()
    for letter in sorted(letters, key=lambda d: (d.partition, d.offset)):
        if letter.partition in blocked:
            continue
        if (letter.partition, letter.offset) in handled:
            out[letter.partition] = letter.offset + 1
        else:
            blocked.add(letter.partition)
    return {p: o for p, o in out.items() if o > start.get(p, 0)}  # never backwards


def replay(letters: list[Delivery], publisher: Publisher, *, limit: int | None,
           job_id: str | None, new_job_id: bool,
           on_skip: Callable[[Delivery, str], None] | None = None,
           handled: set[tuple[int, int]] | None = None) -> list[Replayed]:
    """Re-publish dead letters (matching ``job_id`` if given) to their original topics.
    ``handled`` collects (partition, offset) of each letter replayed or skipped for good
    (it can never be replayed), once its new message is acknowledged."""
    done: list[Replayed] = []
    handled = handled if handled is not None else set()
    for letter in letters:
        if limit is not None and len(done) >= limit:
            break
        info = header_map(letter.headers)
        if job_id is not None and info.get(H_JOB_ID) != job_id:
            continue
        topic = info.get(H_TOPIC)
        if not topic:
            if on_skip:
                on_skip(letter, "no original-topic header")
            handled.add((letter.partition, letter.offset))
            continue
        value, fresh = letter.value, None
        if new_job_id:
            fresh = str(uuid.uuid4())
            try:
                value = payload.with_job_id(letter.value or b"", fresh)
            except PayloadError as exc:  # not a JSON object: never a job, whatever its id
                if on_skip:
                    on_skip(letter, f"cannot set a new jobId: {exc}")
                handled.add((letter.partition, letter.offset))
                continue
        headers = _original(letter.headers)
        headers.append((REPLAYED_FROM,
                        f"{letter.topic}/{letter.partition}/{letter.offset}".encode()))
        partition, offset = publisher.send(topic, value, key=letter.key, headers=headers)
        done.append(Replayed(info.get(H_JOB_ID), topic, partition, offset, fresh))
        handled.add((letter.partition, letter.offset))
    return done
