"""Fuzzing the message parser: whatever arrives on the topic ends in a job or a clean
rejection with a reason and a dead-letter stage. Never another exception, never a job
the database could not store."""

from __future__ import annotations

import json
import uuid
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodes_import.kafka.payload import (
    STAGE_PARSE,
    STAGE_VALIDATE,
    MessageRejected,
    NodeExchange,
    parse,
)
from nodes_import.pipeline.validate import MAX_GROUP_ID_CHARS, MAX_TYPE_CHARS

DOMAIN = "3f1c1a3e-2b9d-4c55-9a57-0d3c6a1f0b21"
LIMIT = 64 * 1024  # kafka.max-message-bytes for these tests
FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | \
    st.text(max_size=40)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=5),
                           max_leaves=30)
field_values = json_values | st.uuids().map(str) | st.just(DOMAIN) | \
    st.lists(st.text(max_size=20), max_size=5)
FIELDS = ("groupId", "domainId", "file", "referenceIds", "nodeType", "jobId")


def _outcome(value: bytes | None) -> NodeExchange | MessageRejected:
    """parse(), asserting the contract: a storable job, or a rejection with a reason."""
    try:
        job = parse(value, max_message_bytes=LIMIT)
    except MessageRejected as exc:
        assert exc.stage in (STAGE_PARSE, STAGE_VALIDATE)
        assert str(exc).strip(), "a rejection names its reason"
        return exc
    _assert_storable(job)
    return job


def _assert_storable(job: NodeExchange) -> None:
    assert job.group_id.strip() and len(job.group_id) <= MAX_GROUP_ID_CHARS
    uuid.UUID(job.domain_id)
    assert (job.file is None) != (job.reference_ids is None)
    texts = [job.group_id, job.file or "", job.node_type or "", *(job.reference_ids or ())]
    assert all("\x00" not in t for t in texts)
    assert job.node_type is None or len(job.node_type) <= MAX_TYPE_CHARS
    if job.job_id is not None:
        uuid.UUID(job.job_id)


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_end_in_a_job_or_a_clean_rejection(value: bytes) -> None:
    _outcome(value)


@FUZZ
@given(json_values)
def test_random_json_ends_in_a_job_or_a_clean_rejection(value: Any) -> None:
    _outcome(json.dumps(value).encode())  # the stdlib writes integers of any size


@FUZZ
@given(st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=len(FIELDS)))
def test_objects_with_the_right_names_and_random_values_end_cleanly(body: dict[str, Any]) -> None:
    _outcome(json.dumps(body).encode())


@FUZZ
@given(st.text(min_size=1, max_size=300), st.lists(st.text(max_size=30), min_size=1,
                                                   max_size=20))
def test_any_text_in_the_fields_is_either_storable_or_rejected(group: str,
                                                                ids: list[str]) -> None:
    got = _outcome(orjson.dumps({"groupId": group, "domainId": DOMAIN, "referenceIds": ids,
                                 "nodeType": group[:70]}))
    if "\x00" in group or any("\x00" in i for i in ids):
        # never storable; NUL is the reason unless a field was refused first for being
        # blank or too long (hypothesis found groupId '\r' with ids ['\x00'])
        assert isinstance(got, MessageRejected)
        assert any(why in str(got) for why in ("NUL", "blank", "longer than")), str(got)


@FUZZ
@given(st.binary(min_size=1, max_size=200), st.integers(min_value=1, max_value=200))
def test_truncated_and_concatenated_messages_end_cleanly(junk: bytes, cut: int) -> None:
    good = orjson.dumps({"groupId": "g", "domainId": DOMAIN, "referenceIds": ["a", "b"]})
    for value in (good[:cut], good + junk, junk + good, good + good):
        _outcome(value)


@pytest.mark.parametrize("depth", [100, 1024, 5000, 200_000])
def test_deep_nesting_is_rejected_or_parsed_without_a_recursion_error(depth: int) -> None:
    # Past the parser's depth limit (orjson: 1024) the message is refused where the limit
    # is passed, so the work is bounded by the limit, not by the message (no wall-clock
    # bound here: the speed of the rest is the benchmark's business).
    for value in (b"[" * depth + b"]" * depth, b"[" * depth,
                  b'{"groupId": "g", "domainId": "' + DOMAIN.encode() + b'", "file": "f", "x": '
                  + b'{"a":' * depth + b"1" + b"}" * depth + b"}"):
        got = _outcome(value[:LIMIT])
        if depth > 1024:
            assert isinstance(got, MessageRejected) and got.stage == STAGE_PARSE
            assert "depth limit exceeded" in str(got), got


def test_huge_strings_are_refused_by_size_or_length_with_the_reason() -> None:
    huge_group = orjson.dumps({"groupId": "g" * 50_000, "domainId": DOMAIN, "file": "f"})
    got = _outcome(huge_group)
    assert isinstance(got, MessageRejected) and "groupId: longer than 255" in str(got)
    over = orjson.dumps({"groupId": "g", "domainId": DOMAIN, "file": "f" * LIMIT})
    got = _outcome(over)
    assert isinstance(got, MessageRejected) and got.stage == STAGE_PARSE
    assert f"over kafka.max-message-bytes ({LIMIT})" in str(got)
    ids = orjson.dumps({"groupId": "g", "domainId": DOMAIN, "referenceIds": ["x" * 1000] * 100})
    assert isinstance(_outcome(ids), MessageRejected)  # > 64 KiB


def test_a_message_exactly_at_the_limit_is_read() -> None:
    body = {"groupId": "g", "domainId": DOMAIN, "file": ""}
    pad = LIMIT - len(orjson.dumps(body))
    value = orjson.dumps({**body, "file": "f" * pad})
    assert len(value) == LIMIT
    assert isinstance(_outcome(value), NodeExchange)


@pytest.mark.parametrize("value", [
    b'{"groupId": "\\ud800", "domainId": "' + DOMAIN.encode() + b'", "file": "f"}',
    b'{"groupId": "\xff\xfe", "domainId": "' + DOMAIN.encode() + b'", "file": "f"}',
    b'{"groupId": "g\\u0000", "domainId": "' + DOMAIN.encode() + b'", "file": "f"}',
    b'\xef\xbb\xbf{"groupId": "g", "domainId": "' + DOMAIN.encode() + b'", "file": "f"}',
])
def test_lone_surrogates_invalid_utf8_nul_and_a_bom_end_cleanly(value: bytes) -> None:
    _outcome(value)
