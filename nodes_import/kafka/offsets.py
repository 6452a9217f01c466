"""What a consumed message is (``Delivery``) and which offsets may be committed
(``OffsetTracker``): a message counts as done once its job is terminal (and dead-lettered
if it FAILED); with several jobs in flight per partition, the commit position is the first
offset not yet done. Plain data: no client is built here (``Delivery.of`` copies a
librdkafka message).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from confluent_kafka import Message

TP = tuple[str, int]  # (topic, partition)
Headers = list[tuple[str, bytes | None]]  # Kafka headers: ordered, repeatable, binary


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
