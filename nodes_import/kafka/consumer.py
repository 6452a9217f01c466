"""The consumers (parent side and tools): ``JobConsumer`` (the daemon's regex
subscription, rebalance callbacks, pause/resume, commits, lag) and ``TopicReader`` (a
short-lived consumer for tools such as ``dlq replay``: reads a topic to its end and reads
or records a group's offsets without joining the group).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Self

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from nodes_import import metrics
from nodes_import.errors import BrokerError
from nodes_import.kafka.clients import create
from nodes_import.kafka.offsets import TP, Delivery

log = logging.getLogger(__name__)


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
        # librdkafka assigns after on_assign returns: on the next poll, new partitions are
        # paused when the daemon is paused, and resumed when it is not (an application pause
        # may outlive a revoke: paused, revoked, "resumed" while nothing was assigned, then
        # given the same partitions back, they stayed paused for good; seen in the soak).
        self._pause_after_assign = False
        self._resume_after_assign: list[TopicPartition] = []

    def open(self, timeout_s: float) -> None:
        """Connect, prove the broker answers within ``timeout_s``, subscribe."""
        self._consumer = create(Consumer, self.settings)
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
        elif partitions:
            self._resume_after_assign = list(partitions)

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
        elif self._resume_after_assign:
            assigned, self._resume_after_assign = self._resume_after_assign, []
            if not self.paused:
                self.consumer.resume(assigned)
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
        self._consumer = create(Consumer, self.settings)

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

