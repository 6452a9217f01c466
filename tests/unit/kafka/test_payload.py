"""NodeExchange parsing: every way a message can be wrong has its own reason and stage."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodes_import.errors import PayloadError
from nodes_import.kafka.payload import MessageRejected, NodeExchange, parse, with_job_id

DOMAIN = "3f1c1a3e-2b9d-4c55-9a57-0d3c6a1f0b21"
JOB = "6f1c1a3e-2b9d-4c55-9a57-0d3c6a1f0b21"
OK = {"groupId": "acme", "domainId": DOMAIN}


def test_a_file_message_parses_with_defaults_left_to_the_daemon() -> None:
    got = parse(orjson.dumps({**OK, "file": "s3://bucket/u.csv.gz", "extra": 1}))
    assert got == NodeExchange("acme", DOMAIN, file="s3://bucket/u.csv.gz")


def test_a_reference_id_message_keeps_its_ids_type_and_job_id() -> None:
    got = parse(orjson.dumps({**OK, "referenceIds": ["a", "b"], "nodeType": "ADMIN",
                              "jobId": JOB.upper()}))
    assert got.reference_ids == ("a", "b") and got.node_type == "ADMIN" and got.job_id == JOB


def test_the_wire_form_round_trips() -> None:
    request = NodeExchange("g", DOMAIN, reference_ids=("x",), node_type="USER", job_id=JOB)
    assert parse(request.to_json()) == request


@pytest.mark.parametrize(("value", "stage", "reason"), [
    (None, "parse", "empty message (null value)"),
    (b"", "parse", "empty message (zero bytes)"),
    (b" \n", "parse", "blank message"),
    (b"{", "parse", "not valid JSON"),
    (b'"text"', "parse", "expected a JSON object, got string"),
    (orjson.dumps({**OK, "groupId": None, "file": "f"}), "validate", "groupId is missing"),
    (orjson.dumps({**OK, "groupId": ["g"], "file": "f"}), "validate",
     "groupId: expected a string, got array"),
    (orjson.dumps({**OK, "groupId": "x" * 256, "file": "f"}), "validate", "longer than 255"),
    (orjson.dumps({**OK, "domainId": 1, "file": "f"}), "validate", "domainId: expected a string"),
    (orjson.dumps({**OK, "domainId": "abc", "file": "f"}), "validate", "domainId: not a UUID"),
    (orjson.dumps({**OK, "file": ""}), "validate", "file is blank"),
    (orjson.dumps({**OK, "file": 3}), "validate", "file: expected a string, got number"),
    (orjson.dumps({**OK, "referenceIds": []}), "validate", "referenceIds is empty"),
    (orjson.dumps({**OK, "referenceIds": {"a": 1}}), "validate",
     "expected an array of strings, got object"),
    (orjson.dumps({**OK, "referenceIds": ["a", None]}), "validate",
     "referenceIds[1]: expected a string, got null"),
    (orjson.dumps({**OK, "file": "f", "referenceIds": ["a"]}), "validate",
     "both file and referenceIds"),
    (orjson.dumps(OK), "validate", "neither file nor referenceIds"),
    (orjson.dumps({**OK, "file": "f", "jobId": "1"}), "validate", "jobId: not a UUID"),
    (orjson.dumps({**OK, "file": "f", "nodeType": True}), "validate",
     "nodeType: expected a string, got boolean"),
])
def test_a_bad_message_is_rejected_with_a_precise_reason(value: bytes | None, stage: str,
                                                          reason: str) -> None:
    with pytest.raises(MessageRejected) as caught:
        parse(value)
    assert caught.value.stage == stage
    assert reason in str(caught.value)
    assert isinstance(caught.value, PayloadError)  # FAILED + dead letter, never retried


def test_too_many_reference_ids_are_rejected_before_any_work() -> None:
    with pytest.raises(MessageRejected, match=r"over node\.import\.max-reference-ids"):
        parse(orjson.dumps({**OK, "referenceIds": ["a", "b", "c"]}), max_reference_ids=2)


def test_with_job_id_replaces_only_the_job_id() -> None:
    value = orjson.dumps({**OK, "file": "f", "jobId": JOB, "custom": [1]})
    assert orjson.loads(with_job_id(value, "new")) == {**OK, "file": "f", "jobId": "new",
                                                       "custom": [1]}


@given(st.binary(max_size=200))
def test_arbitrary_bytes_either_parse_or_raise_a_payload_error(value: bytes) -> None:
    try:
        parse(value)
    except MessageRejected as exc:
        assert exc.stage in ("parse", "validate") and str(exc)


@pytest.mark.parametrize(("value", "stage", "reason"), [
    (None, "parse", "empty message (null value)"),
    (b"", "parse", "empty message (zero bytes)"),
    (b" \n", "parse", "blank message (whitespace only)"),
    (orjson.dumps({**OK, "referenceIds": []}), "validate", "referenceIds is empty"),
    (orjson.dumps({**OK, "referenceIds": ["a", 3]}), "validate",
     "referenceIds[1]: expected a string, got number"),
    (orjson.dumps({**OK, "referenceIds": ["a\x00"]}), "validate",
     "referenceIds[0]: contains a NUL character"),
    (orjson.dumps(OK), "validate",
     "neither file nor referenceIds nor referenceIdsFile is set; give exactly one"),
    (orjson.dumps({**OK, "file": "f", "referenceIdsFile": "g"}), "validate",
     "both file and referenceIdsFile are set; give exactly one"),
    (orjson.dumps({**OK, "file": "f", "referenceIds": ["a"], "referenceIdsFile": "g"}),
     "validate", "file, referenceIds and referenceIdsFile are all set; give exactly one"),
    (orjson.dumps({**OK, "file": "f", "nodeType": "T" * 65}), "validate",
     "nodeType: longer than 64 characters"),
    (orjson.dumps({**OK, "file": "f", "jobId": "z" * 100}), "validate",
     f"jobId: not a UUID: {'z' * 80!r}"),
])
def test_the_reason_a_message_is_rejected_is_exactly_what_the_dead_letter_says(
        value: bytes | None, stage: str, reason: str) -> None:
    with pytest.raises(MessageRejected) as caught:
        parse(value)
    assert (caught.value.stage, str(caught.value)) == (stage, reason)


def test_the_limits_themselves_are_allowed() -> None:
    longest = parse(orjson.dumps({**OK, "groupId": "g" * 255, "nodeType": "T" * 64,
                                  "referenceIds": ["a", "b"]}), max_reference_ids=2)
    assert (len(longest.group_id), longest.node_type, longest.reference_ids) == (
        255, "T" * 64, ("a", "b"))
    with pytest.raises(MessageRejected) as caught:
        parse(orjson.dumps({**OK, "referenceIds": ["a", "b", "c"]}), max_reference_ids=2)
    assert (caught.value.stage, str(caught.value)) == (
        "validate", "referenceIds: 3 IDs, over node.import.max-reference-ids (2)")


@pytest.mark.parametrize("request_", [
    NodeExchange("g", DOMAIN, file="s3://b/u.csv.gz", node_type="USER", job_id=JOB),
    NodeExchange("g", DOMAIN, reference_ids_file="/data/ids.txt.gz"),
    NodeExchange("g", DOMAIN, reference_ids=("x", "y")),
], ids=["file", "referenceIdsFile", "referenceIds"])
def test_each_kind_of_job_round_trips_through_its_wire_form(request_: NodeExchange) -> None:
    wire = orjson.loads(request_.to_json())
    assert parse(request_.to_json()) == request_
    assert set(wire) == {"groupId", "domainId"} | {
        name for name, value in (("file", request_.file), ("referenceIds", request_.reference_ids),
                                 ("referenceIdsFile", request_.reference_ids_file),
                                 ("nodeType", request_.node_type), ("jobId", request_.job_id))
        if value is not None}
