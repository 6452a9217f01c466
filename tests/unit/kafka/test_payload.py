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
