"""The confluent-kafka edge (parent side only): poll, pause/resume, offsets, producing.

Everything the daemon needs from Kafka goes through here, so the rest of the service
sees plain data (``Delivery``) and the service's own errors (``BrokerError``):

- ``client_settings``: librdkafka settings from the config; ``kafka.properties`` (every
  client: security.protocol, SASL, TLS) and over it the ``kafka.consumer`` /
  ``kafka.producer`` properties pass through unchanged. ``tool_settings``: the same for a
  command's short-lived client, quiet, its errors kept by a ``ClientErrors``.
- ``OffsetTracker``: which offsets may be committed. A message counts as done once its
  job is terminal (and dead-lettered if it FAILED); with several jobs in flight per
  partition, the commit position is the first offset not yet done.
- ``JobConsumer``: the regex subscription, rebalance callbacks, pause/resume, commits.
- ``Publisher``: one idempotent producer (acks=all) per process for dead letters and
  ``submit``: librdkafka spends ~0.5 s before an idempotent producer's first send.
- ``TopicReader``: a short-lived consumer for tools (``dlq replay``) that reads a topic to
  its end and reads or records a group's offsets without joining the group.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from nodes_import import metrics
from nodes_import.config import KafkaConfig
from nodes_import.errors import BrokerError, ConfigError
from nodes_import.kafka import payload

log = logging.getLogger(__name__)

TP = tuple[str, int]  # (topic, partition)
Headers = list[tuple[str, bytes | None]]  # Kafka headers: ordered, repeatable, binary

# Defaults that user properties may override.
CONSUMER_DEFAULTS: dict[str, Any] = {
    "auto.offset.reset": "earliest",  # a new group starts at the oldest job (and Tansu's
                                      # ListOffsets(latest) is unreliable)
}
# What at-least-once rests on: offsets are committed only for finished jobs. Not
# overridable: an auto-commit would commit messages whose jobs never ran.
CONSUMER_FIXED: dict[str, Any] = {"enable.auto.commit": False,
                                  "enable.auto.offset.store": False}
PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
}
# Properties whose values are secrets: never logged.
SECRET_KEYS = ("sasl.password", "ssl.key.password", "ssl.keystore.password",
               "sasl.oauthbearer.client.secret")


def client_settings(kafka: KafkaConfig, kind: str, *, bootstrap: str | None = None,
                    group_id: str | None = None) -> dict[str, Any]:
    """librdkafka settings for a ``consumer`` or ``producer`` from the configuration.

    Later wins: the defaults of ``kind``, ``kafka.properties`` (every client), then
    ``kafka.consumer.properties`` or ``kafka.producer.properties``; for a consumer,
    ``CONSUMER_FIXED`` over all.
    """
    servers = bootstrap or kafka.bootstrap_servers
    if not servers:
        raise ConfigError("no Kafka bootstrap servers configured: set kafka.bootstrap-servers "
                          "(NODES_IMPORT_KAFKA_BOOTSTRAP_SERVERS) or pass --bootstrap-server "
                          "(a daemon running on the local broker prints its address when it "
                          "starts)")
    settings: dict[str, Any] = {"bootstrap.servers": servers,
                                "logger": logging.getLogger("librdkafka")}
    if kind == "consumer":
        settings.update(CONSUMER_DEFAULTS)
        settings["group.id"] = group_id or kafka.group_id
        own = {**kafka.properties, **kafka.consumer_properties}
        settings.update(own)
        for key, value in CONSUMER_FIXED.items():
            if key in own and own[key] != value:
                log.warning("consumer property ignored: the daemon commits offsets itself",
                            extra={"fields": {"property": key}})
            settings[key] = value
    else:
        settings.update(PRODUCER_DEFAULTS)
        settings.update(kafka.properties)
        settings.update(kafka.producer_properties)
    return settings


# librdkafka's syslog level for a command's short-lived clients: critical and worse only.
# Their errors go to a ClientErrors (error_cb) instead: an unreachable broker is one line
# from the command, not a log line every 50 ms.
TOOL_LOG_LEVEL = 2


class ClientErrors:
    """The ``error_cb`` of a command's client: keeps the latest error instead of logging
    each (librdkafka reports an unreachable broker every few milliseconds)."""

    def __init__(self) -> None:
        self.last: str | None = None
        self.count = 0

    def __call__(self, error: KafkaError) -> None:
        self.last, self.count = str(error.str()), self.count + 1

    def explain(self, text: str) -> str:
        """``text`` with the latest client error, when there was one."""
        return f"{text} (last Kafka error: {self.last})" if self.last else text


def tool_settings(kafka: KafkaConfig, kind: str, errors: ClientErrors, *,
                  timeout_s: float) -> dict[str, Any]:
    """``client_settings`` for a command's short-lived client (``submit``, ``dlq replay``):
    its errors recorded by ``errors``, librdkafka's own log quiet (``TOOL_LOG_LEVEL``), and
    a producer that gives a message up after ``timeout_s``. The configured properties still
    win (``log_level``, ``debug``, ``message.timeout.ms``)."""
    settings = client_settings(kafka, kind)
    configured = {**kafka.properties, **(kafka.consumer_properties if kind == "consumer"
                                        else kafka.producer_properties)}
    quiet: dict[str, Any] = {"log_level": TOOL_LOG_LEVEL}
    if kind == "producer":
        quiet["message.timeout.ms"] = max(1, round(timeout_s * 1000))
    settings.update({k: v for k, v in quiet.items() if k not in configured})
    settings["error_cb"] = errors
    return settings


def _create(client: Callable[[dict[str, Any]], Any], settings: Mapping[str, Any]) -> Any:
    """A Consumer or Producer; settings librdkafka refuses are a ``ConfigError`` (exit 2):
    creating a client only fails on its settings, it connects later."""
    try:
        return client(dict(settings))
    except (KafkaException, ValueError) as exc:
        reason = exc.args[0].str() if isinstance(exc, KafkaException) else str(exc)
        raise ConfigError(f"Kafka client settings refused: {reason}") from exc


def redacted(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings fit for a log line: secrets masked, the logger object left out."""
    return {k: ("***" if k in SECRET_KEYS else v) for k, v in settings.items()
            if k not in ("logger", "error_cb")}


@dataclass(frozen=True)
class Delivery:
    """One consumed message, copied out of librdkafka."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers = field(default_factory=list)
    timestamp_ms: int | None = None

    @property
    def tp(self) -> TP:
        """(topic, partition)."""
        return (self.topic, self.partition)

    @classmethod
    def of(cls, msg: Message) -> Delivery:
        """Copy a confluent-kafka message."""
        kind, stamp = msg.timestamp()
        raw = msg.headers() or []
        items = list(raw.items()) if isinstance(raw, dict) else raw
        return cls(topic=str(msg.topic()), partition=int(msg.partition() or 0),
                   offset=int(msg.offset() or 0), key=msg.key(), value=msg.value(),
                   headers=[(k, v if isinstance(v, bytes | None) else v.encode())
                            for k, v in items],
                   timestamp_ms=stamp if kind else None)


class OffsetTracker:
    """Per partition: the offsets in flight and the position that may be committed.

    Offsets of one partition are added in consumption (= increasing) order. ``done``
    marks one; the commit position moves past the longest done prefix, so a slow job
    holds back the commits of the faster ones behind it, never the other way round.
    """

    def __init__(self) -> None:
        self._pending: dict[TP, OrderedDict[int, bool]] = {}
        self._position: dict[TP, int] = {}  # next offset to commit, per partition
        self._committed: dict[TP, int] = {}

    def add(self, tp: TP, offset: int) -> None:
        """A message was taken: it must be done before its offset is committed."""
        self._pending.setdefault(tp, OrderedDict())[offset] = False

    def done(self, tp: TP, offset: int) -> None:
        """The message's job is terminal (or the message was dead-lettered)."""
        pending = self._pending.get(tp)
        if pending is None or offset not in pending:
            return  # a partition revoked since: its new owner commits it
        pending[offset] = True
        while pending and pending[next(iter(pending))]:
            first, _ = pending.popitem(last=False)
            self._position[tp] = first + 1

    def in_flight(self) -> int:
        """Messages taken and not done, over all partitions."""
        return sum(sum(1 for d in p.values() if not d) for p in self._pending.values())

    def to_commit(self, tps: Iterable[TP] | None = None) -> dict[TP, int]:
        """Positions that moved since the last ``committed`` call."""
        wanted = self._position.keys() if tps is None else [t for t in tps if t in self._position]
        return {tp: self._position[tp] for tp in wanted
                if self._committed.get(tp) != self._position[tp]}

    def committed(self, positions: Mapping[TP, int]) -> None:
        """Record a successful commit."""
        self._committed.update(positions)

    def forget(self, tps: Iterable[TP]) -> None:
        """Drop revoked partitions: their new owner starts from the committed offset."""
        for tp in tps:
            self._pending.pop(tp, None)
            self._position.pop(tp, None)
            self._committed.pop(tp, None)


def _tps(partitions: Sequence[TopicPartition]) -> list[TP]:
    return [(p.topic, p.partition) for p in partitions]


class JobConsumer:
    """The daemon's consumer: one per daemon process, used from one thread.

    ``on_assign``/``on_revoke`` are called from inside ``poll`` with (topic, partition)
    lists; ``on_revoke`` runs before the partitions go, so the daemon can commit.
    """

    def __init__(self, settings: Mapping[str, Any], pattern: str,
                 on_assign: Callable[[list[TP]], None],
                 on_revoke: Callable[[list[TP]], None]) -> None:
        self.settings = dict(settings)
        self.pattern = pattern if pattern.startswith("^") else "^" + pattern
        self._on_assign, self._on_revoke = on_assign, on_revoke
        self._consumer: Consumer | None = None
        self.paused = False
        # librdkafka assigns after on_assign returns: new partitions are paused on the
        # next poll when the daemon is paused.
        self._pause_after_assign = False

    def open(self, timeout_s: float) -> None:
        """Connect, prove the broker answers within ``timeout_s``, subscribe."""
        self._consumer = _create(Consumer, self.settings)
        try:
            self._consumer.list_topics(timeout=timeout_s)
        except KafkaException as exc:
            self.close()
            raise BrokerError(f"cannot reach Kafka at {self.settings['bootstrap.servers']} "
                              f"within {timeout_s:.0f}s: {exc.args[0]}") from exc
        self._consumer.subscribe([self.pattern], on_assign=self._assigned,
                                 on_revoke=self._revoked, on_lost=self._revoked)
        log.info("subscribed", extra={"fields": {"pattern": self.pattern,
                                                 "groupId": self.settings.get("group.id")}})

    @property
    def consumer(self) -> Consumer:
        if self._consumer is None:
            raise BrokerError("the consumer is not open")
        return self._consumer

    def _assigned(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = _tps(partitions)
        log.info("partitions assigned", extra={"fields": {"partitions": len(tps),
                                                          "assigned": sorted(tps)}})
        self._on_assign(tps)
        if self.paused and partitions:
            self._pause_after_assign = True

    def _revoked(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = _tps(partitions)
        log.info("partitions revoked", extra={"fields": {"partitions": len(tps)}})
        self._on_revoke(tps)

    def poll(self, timeout_s: float) -> Delivery | None:
        """The next message, or None. Errors that are not fatal are logged and skipped."""
        msg = self.consumer.poll(timeout_s)
        if self._pause_after_assign:
            self._pause_after_assign = False
            self.pause()
        return None if msg is None else self._delivery(msg)

    def poll_many(self, max_messages: int, timeout_s: float) -> list[Delivery]:
        """Up to ``max_messages``: waits up to ``timeout_s`` for the first, then takes only
        what librdkafka already holds (a batch consume would wait out its whole timeout
        whenever fewer messages than asked for are there)."""
        first = self.poll(timeout_s)
        if first is None or max_messages <= 1:
            return [] if first is None else [first]
        more = (self._delivery(m) for m in self.consumer.consume(max_messages - 1, 0))
        return [first, *(d for d in more if d is not None)]

    def _delivery(self, msg: Message) -> Delivery | None:
        """The message's data, or None for an error (logged; fatal ones raise)."""
        error = msg.error()
        if error is not None:
            if error.code() not in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART):
                metrics.consumer_error(error.name())
            if error.fatal():
                raise BrokerError(f"fatal consumer error: {error.str()}")
            if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                # No topic matches the pattern yet: normal until the first job is sent.
                log.info("no topic matches yet", extra={"fields": {"error": error.str()}})
            elif error.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error", extra={"fields": {"error": error.str()}})
            return None
        return Delivery.of(msg)

    def pause(self) -> None:
        """Stop fetching from every assigned partition; keep polling to stay in the group."""
        assignment = self.consumer.assignment()
        if assignment:
            self.consumer.pause(assignment)
        self.paused = True

    def resume(self) -> None:
        """Fetch again, from each partition's next undelivered offset.

        After a resume librdkafka waits ~1 s before fetching again (measured on Tansu,
        whatever the fetch settings); a seek to the current position fetches at once.
        """
        assignment = self.consumer.assignment()
        if assignment:
            positions = self.consumer.position(assignment)
            self.consumer.resume(assignment)
            for tp in positions:
                if tp.offset >= 0:  # a partition not read yet starts at its committed offset
                    try:
                        self.consumer.seek(tp)
                    except KafkaException as exc:
                        log.debug("seek after resume failed", extra={"fields": {
                            "error": str(exc.args[0])}})
        self.paused = False

    def commit(self, positions: Mapping[TP, int]) -> bool:
        """Commit positions synchronously; False (logged) when the broker refused."""
        if not positions:
            return True
        offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("offset commit failed; retried later",
                        extra={"fields": {"error": str(exc.args[0])}})
            metrics.consumer_error("COMMIT_FAILED")
            return False
        return True

    def lag(self, timeout_s: float = 1.0) -> dict[TP, int]:
        """Per assigned partition: high watermark minus the group's committed offset, i.e.
        messages not done yet. One OffsetFetch round trip; watermarks come from the last
        fetch when known. Partitions whose figures the broker does not give are left out."""
        assignment = self.consumer.assignment()
        if not assignment:
            return {}
        try:
            committed = self.consumer.committed(assignment, timeout=timeout_s)
        except KafkaException as exc:
            log.debug("committed offsets unavailable", extra={"fields": {"error": str(exc)}})
            return {}
        lag: dict[TP, int] = {}
        for tp in committed:
            try:
                marks = self.consumer.get_watermark_offsets(tp, cached=True)
                if marks is None or marks[1] < 0:  # not fetched yet (paused, new): ask
                    marks = self.consumer.get_watermark_offsets(tp, timeout=timeout_s)
            except KafkaException:
                continue
            if marks is not None and marks[1] >= 0:  # None: the broker did not answer
                low, high = marks
                lag[(tp.topic, tp.partition)] = max(0, high - (tp.offset if tp.offset >= 0
                                                               else low))
        return lag

    def close(self) -> None:
        """Leave the group and close. Idempotent."""
        if self._consumer is not None:
            try:
                self._consumer.close()
            except (KafkaException, RuntimeError) as exc:
                log.warning("consumer close failed", extra={"fields": {"error": str(exc)}})
            self._consumer = None


class Publisher:
    """One idempotent producer; ``send`` waits for the broker's acknowledgement."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = dict(settings)
        self._producer = _create(Producer, self.settings)

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


class TopicReader:
    """A consumer for tools, outside any group's membership: reads ``topic`` by assignment
    (nothing committed) and reads or records the committed offsets of ``group`` on it.

    ``open()``/``close()``, or ``with``. Kafka's errors are raised as ``BrokerError`` with
    librdkafka's message as theirs (callers say what they were doing).
    """

    def __init__(self, settings: Mapping[str, Any], topic: str, group: str) -> None:
        self.settings = {**settings, "group.id": group, "enable.auto.commit": False,
                         "enable.partition.eof": True}
        self.topic = topic
        self._consumer: Consumer | None = None

    def open(self) -> None:
        """Create the client (it connects on first use)."""
        self._consumer = _create(Consumer, self.settings)

    def close(self) -> None:
        """Close the client. Idempotent."""
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def consumer(self) -> Consumer:
        if self._consumer is None:
            raise BrokerError("the reader is not open")
        return self._consumer

    def _partitions(self, timeout_s: float) -> list[int]:
        """The topic's partitions; none when it does not exist (or the broker says why not)."""
        meta = self.consumer.list_topics(self.topic, timeout=timeout_s).topics.get(self.topic)
        if meta is None or meta.error is not None or not meta.partitions:
            return []
        return list(meta.partitions)

    def committed(self, *, timeout_s: float) -> dict[int, int]:
        """Per partition, the group's committed offset (0 where it has none)."""
        try:
            partitions = self._partitions(timeout_s)
            if not partitions:
                return {}
            committed = self.consumer.committed(
                [TopicPartition(self.topic, p) for p in partitions], timeout=timeout_s)
        except KafkaException as exc:
            raise BrokerError(str(exc.args[0])) from exc
        return {tp.partition: max(tp.offset, 0) for tp in committed}

    def commit(self, offsets: Mapping[int, int]) -> None:
        """Record ``offsets`` (partition -> next offset) as the group's commits."""
        try:
            self.consumer.commit(
                offsets=[TopicPartition(self.topic, p, o) for p, o in offsets.items()],
                asynchronous=False)
        except KafkaException as exc:
            raise BrokerError(str(exc.args[0])) from exc

    def read_to_end(self, *, timeout_s: float, idle_s: float,
                    start: Mapping[int, int] | None = None) -> list[Delivery]:
        """The messages from ``start`` (partition -> offset; default: the beginning) to the
        end: the read stops ``idle_s`` after the last message once every partition's end
        was reached, or ``timeout_s`` after the last message before that."""
        return list(self.iter_to_end(timeout_s=timeout_s, idle_s=idle_s, start=start))

    def iter_to_end(self, *, timeout_s: float, idle_s: float,
                    start: Mapping[int, int] | None = None) -> Iterator[Delivery]:
        """``read_to_end`` one message at a time (a caller that keeps only some of them
        holds only those)."""
        try:
            partitions = self._partitions(timeout_s)
            if not partitions:
                return
            self.consumer.assign([TopicPartition(self.topic, p, (start or {}).get(p, 0))
                                  for p in partitions])
            at_end: set[int] = set()
            last = time.monotonic()
            while time.monotonic() - last < (idle_s if len(at_end) == len(partitions)
                                             else timeout_s):
                msg = self.consumer.poll(0.2)
                if msg is None:
                    continue
                last = time.monotonic()
                err = msg.error()
                if err is not None and err.code() == KafkaError._PARTITION_EOF:
                    at_end.add(int(msg.partition() or 0))
                elif err is None:
                    yield Delivery.of(msg)
        except KafkaException as exc:
            raise BrokerError(str(exc.args[0])) from exc

    def read_at(self, partition: int, offset: int, *, timeout_s: float) -> Delivery | None:
        """The message at ``offset`` of ``partition`` (None: there is none: past the end,
        or deleted by retention). Reads by assignment: nothing committed."""
        try:
            if partition not in self._partitions(timeout_s):
                return None
            low, high = self.consumer.get_watermark_offsets(
                TopicPartition(self.topic, partition), timeout=timeout_s, cached=False)
            if not low <= offset < high:  # assigned there, a consumer would only wait
                return None
            self.consumer.assign([TopicPartition(self.topic, partition, offset)])
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                msg = self.consumer.poll(0.2)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None and err.code() == KafkaError._PARTITION_EOF:
                    return None
                if err is None:
                    return Delivery.of(msg) if msg.offset() == offset else None
        except KafkaException as exc:
            raise BrokerError(str(exc.args[0])) from exc
        raise BrokerError(f"no answer from {self.topic}/{partition} within {timeout_s:g}s")


def submit(publisher: Publisher, topic: str, request: Any, *,
           timeout_s: float = 30.0) -> tuple[int, int]:
    """Produce one NodeExchange (``payload.NodeExchange``) keyed by its jobId; wait at most
    ``timeout_s`` for the acknowledgement."""
    key = request.job_id.encode() if request.job_id else None
    return publisher.send(topic, request.to_json(), key=key,
                          headers=[payload.TYPE_HEADER], timeout_s=timeout_s)
