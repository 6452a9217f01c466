"""NodeExchange: the job message, from Kafka bytes to a validated frozen dataclass. Pure.

The value is one JSON object::

    {"groupId": "acme", "domainId": "<uuid>", "file": "/data/users.csv.gz",
     "nodeType": "USER", "jobId": "<uuid>"}

with exactly one of ``file`` (a path or URI: the cost-based path), ``referenceIds``
(an array of strings: the non-cost-based path) and ``referenceIdsFile`` (a path or URI of
a file of IDs, one a line, optionally gzipped: the same path for lists too large for a
message). ``nodeType`` and ``jobId`` are optional;
unknown fields are ignored so producers can add fields before consumers know them.

``parse`` raises ``PayloadError`` with a reason precise enough to fix the producer, and
``MessageRejected.stage`` says whether the bytes were unreadable (``parse``) or the
object was wrong (``validate``): both end on the dead-letter topic.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from nodes_import.errors import PayloadError
from nodes_import.pipeline.validate import MAX_GROUP_ID_CHARS, MAX_TYPE_CHARS

# Dead-letter stages of a rejected message.
STAGE_PARSE = "parse"
STAGE_VALIDATE = "validate"
# The header naming the message's type, and the Java type the seed's producers put in it;
# kept for traceability (on submitted jobs and on dead letters that lack it).
TYPE_ID_HEADER = "__TypeId__"
TYPE_ID = "NodeExchange"
TYPE_HEADER = (TYPE_ID_HEADER, TYPE_ID.encode())


class MessageRejected(PayloadError):
    """A message that is not a valid NodeExchange; ``stage`` is parse or validate."""

    def __init__(self, reason: str, stage: str) -> None:
        super().__init__(reason)
        self.stage = stage


@dataclass(frozen=True)
class NodeExchange:
    """A validated job request. Exactly one of ``file``, ``reference_ids`` and
    ``reference_ids_file`` is set."""

    group_id: str
    domain_id: str
    file: str | None = None
    reference_ids: tuple[str, ...] | None = None
    node_type: str | None = None
    job_id: str | None = None
    reference_ids_file: str | None = None

    def to_json(self) -> bytes:
        """The wire form (what ``nodes-import submit`` produces)."""
        body: dict[str, Any] = {"groupId": self.group_id, "domainId": self.domain_id}
        if self.file is not None:
            body["file"] = self.file
        if self.reference_ids is not None:
            body["referenceIds"] = list(self.reference_ids)
        if self.reference_ids_file is not None:
            body["referenceIdsFile"] = self.reference_ids_file
        if self.node_type is not None:
            body["nodeType"] = self.node_type
        if self.job_id is not None:
            body["jobId"] = self.job_id
        return orjson.dumps(body)


def _describe(value: Any) -> str:
    """A JSON type name for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _text(body: dict[str, Any], name: str, *, required: bool,
          limit: int | None = None) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise MessageRejected(f"{name} is missing", STAGE_VALIDATE)
        return None
    if not isinstance(value, str):
        raise MessageRejected(f"{name}: expected a string, got {_describe(value)}", STAGE_VALIDATE)
    if not value.strip():
        raise MessageRejected(f"{name} is blank", STAGE_VALIDATE)
    if limit is not None and len(value) > limit:
        raise MessageRejected(f"{name}: longer than {limit} characters", STAGE_VALIDATE)
    if "\x00" in value:  # PostgreSQL text cannot hold NUL: the job row could never be written
        raise MessageRejected(f"{name}: contains a NUL character", STAGE_VALIDATE)
    return value


def _uuid(body: dict[str, Any], name: str, *, required: bool) -> str | None:
    value = _text(body, name, required=required)
    if value is None:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        raise MessageRejected(f"{name}: not a UUID: {value[:80]!r}", STAGE_VALIDATE) from exc


def _reference_ids(body: dict[str, Any], max_ids: int) -> tuple[str, ...] | None:
    value = body.get("referenceIds")
    if value is None:
        return None
    if not isinstance(value, list):
        raise MessageRejected(f"referenceIds: expected an array of strings, got {_describe(value)}",
                              STAGE_VALIDATE)
    if not value:
        raise MessageRejected("referenceIds is empty", STAGE_VALIDATE)
    if len(value) > max_ids:
        raise MessageRejected(f"referenceIds: {len(value)} IDs, over "
                              f"node.import.max-reference-ids ({max_ids})", STAGE_VALIDATE)
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise MessageRejected(f"referenceIds[{index}]: expected a string, got "
                                  f"{_describe(item)}", STAGE_VALIDATE)
        if "\x00" in item:
            raise MessageRejected(f"referenceIds[{index}]: contains a NUL character",
                                  STAGE_VALIDATE)
    return tuple(value)


def decode(value: bytes | None) -> dict[str, Any]:
    """Bytes -> a JSON object, or ``MessageRejected`` at the parse stage."""
    if value is None:
        raise MessageRejected("empty message (null value)", STAGE_PARSE)
    if not value:
        raise MessageRejected("empty message (zero bytes)", STAGE_PARSE)
    if not value.strip():
        raise MessageRejected("blank message (whitespace only)", STAGE_PARSE)
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise MessageRejected(f"not valid JSON: {exc}", STAGE_PARSE) from exc
    if not isinstance(body, dict):
        raise MessageRejected(f"expected a JSON object, got {_describe(body)}", STAGE_PARSE)
    return body


def parse(value: bytes | None, *, max_reference_ids: int = 10_000_000,
          max_message_bytes: int | None = None) -> NodeExchange:
    """Validate one message value. Raises ``MessageRejected`` (a ``PayloadError``).

    A value over ``max_message_bytes`` is rejected unread (stage parse): the limit bounds
    what one message can cost the daemon to decode and hold.
    """
    if max_message_bytes is not None and value is not None and len(value) > max_message_bytes:
        raise MessageRejected(f"message of {len(value)} bytes, over kafka.max-message-bytes "
                              f"({max_message_bytes})", STAGE_PARSE)
    body = decode(value)
    group_id = _text(body, "groupId", required=True, limit=MAX_GROUP_ID_CHARS)
    domain_id = _uuid(body, "domainId", required=True)
    file = _text(body, "file", required=False)
    ids = _reference_ids(body, max_reference_ids)
    ids_file = _text(body, "referenceIdsFile", required=False)
    given = [name for name, value in (("file", file), ("referenceIds", ids),
                                      ("referenceIdsFile", ids_file)) if value is not None]
    if len(given) > 1:
        which = f"both {given[0]} and {given[1]} are" if len(given) == 2 else \
            f"{', '.join(given[:-1])} and {given[-1]} are all"
        raise MessageRejected(f"{which} set; give exactly one", STAGE_VALIDATE)
    if not given:
        raise MessageRejected("neither file nor referenceIds nor referenceIdsFile is set; "
                              "give exactly one", STAGE_VALIDATE)
    assert group_id is not None and domain_id is not None
    return NodeExchange(
        group_id=group_id, domain_id=domain_id, file=file, reference_ids=ids,
        reference_ids_file=ids_file,
        node_type=_text(body, "nodeType", required=False, limit=MAX_TYPE_CHARS),
        job_id=_uuid(body, "jobId", required=False))


def with_job_id(value: bytes, job_id: str) -> bytes:
    """The same JSON object with ``jobId`` replaced (``dlq replay --new-job-id``)."""
    body = decode(value)
    body["jobId"] = job_id
    return orjson.dumps(body)
