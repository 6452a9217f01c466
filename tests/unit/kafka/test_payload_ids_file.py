"""The message field ``referenceIdsFile``: a file of IDs instead of the IDs inline."""

from __future__ import annotations

import orjson
import pytest

from nodes_import.kafka.payload import MessageRejected, NodeExchange, parse

DOMAIN = "3f1c1a3e-2b9d-4c55-9a57-0d3c6a1f0b21"
OK = {"groupId": "acme", "domainId": DOMAIN}


def test_a_message_may_name_a_file_of_reference_ids() -> None:
    got = parse(orjson.dumps({**OK, "referenceIdsFile": "s3://bucket/ids/job.txt.gz"}))
    assert got.reference_ids_file == "s3://bucket/ids/job.txt.gz"
    assert got.file is None and got.reference_ids is None


def test_a_reference_id_file_message_round_trips() -> None:
    request = NodeExchange("g", DOMAIN, reference_ids_file="https://h.example/ids.txt")
    assert orjson.loads(request.to_json())["referenceIdsFile"] == "https://h.example/ids.txt"
    assert parse(request.to_json()) == request


@pytest.mark.parametrize(("extra", "reason"), [
    ({"file": "f", "referenceIdsFile": "i"}, "both file and referenceIdsFile are set"),
    ({"referenceIds": ["a"], "referenceIdsFile": "i"},
     "both referenceIds and referenceIdsFile are set"),
    ({"file": "f", "referenceIds": ["a"], "referenceIdsFile": "i"},
     "file, referenceIds and referenceIdsFile are all set"),
    ({}, "neither file nor referenceIds nor referenceIdsFile"),
    ({"referenceIdsFile": " "}, "referenceIdsFile is blank"),
    ({"referenceIdsFile": ["s3://b/k"]}, "referenceIdsFile: expected a string, got array"),
])
def test_exactly_one_of_file_reference_ids_and_reference_ids_file(extra: dict[str, object],
                                                                  reason: str) -> None:
    with pytest.raises(MessageRejected) as caught:
        parse(orjson.dumps({**OK, **extra}))
    assert caught.value.stage == "validate"
    assert reason in str(caught.value)
