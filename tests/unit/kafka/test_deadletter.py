"""Dead-letter headers: the original message kept, the error context added, stale context
dropped."""

from __future__ import annotations

import orjson

from nodes_import.kafka import deadletter as dl
from nodes_import.kafka.offsets import Delivery


def _letter(headers: list[tuple[str, bytes | None]]) -> Delivery:
    return Delivery("a-users", 2, 41, b"key", b"{}", headers)


def test_original_headers_come_first_and_the_error_context_after() -> None:
    failure = dl.Failure("import", "Timeout exceeded", "nodes_import.errors.JobTimeoutError",
                         "Traceback...", "job-1", {"status": "FAILED", "total": 10})
    headers = dl.headers_for(_letter([("trace", b"1"), ("trace", None)]), failure,
                             group_id="g")
    assert headers[:3] == [("trace", b"1"), ("trace", None), ("__TypeId__", b"NodeExchange")]
    info = dl.header_map(headers)
    assert (info[dl.H_TOPIC], info[dl.H_PARTITION], info[dl.H_OFFSET]) == ("a-users", "2", "41")
    assert info[dl.H_STAGE] == "import" and info[dl.H_MESSAGE] == "Timeout exceeded"
    assert info[dl.H_CLASS] == "nodes_import.errors.JobTimeoutError"
    assert info[dl.H_STACKTRACE] == "Traceback..." and info[dl.H_JOB_ID] == "job-1"
    assert orjson.loads(info[dl.H_COUNTS]) == {"status": "FAILED", "total": 10}
    assert info[dl.H_GROUP] == "g" and ":" in info[dl.H_INSTANCE]


def test_a_letter_dead_lettered_again_carries_only_the_new_error_context() -> None:
    old = [("__TypeId__", b"Custom"), (dl.H_STAGE, b"parse"), (dl.REPLAYED_FROM, b"dlq/0/1")]
    failure = dl.Failure("validate", "bad", "X")
    headers = dl.headers_for(_letter(old), failure, group_id="g")
    assert [v for k, v in headers if k == dl.H_STAGE] == [b"validate"]
    assert dl.REPLAYED_FROM not in dict(headers)
    assert dict(headers)["__TypeId__"] == b"Custom"  # the producer's own type id is kept
    assert dl.H_JOB_ID not in dict(headers) and dl.H_STACKTRACE not in dict(headers)


class _Publisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes | None]]]] = []

    def send(self, topic: str, value: bytes | None, *, key: bytes | None = None,
             headers: list[tuple[str, bytes | None]] | None = None) -> tuple[int, int]:
        self.sent.append((topic, value, key, headers or []))
        return 0, len(self.sent) - 1


def test_replay_sends_letters_home_without_error_headers_and_filters_by_job() -> None:
    value = orjson.dumps({"groupId": "g", "domainId": "d", "file": "f", "jobId": "j1"})
    letters = []
    for n, job in enumerate(("j1", "j2", "j1")):
        failure = dl.Failure("import", "e", "X", job_id=job)
        headers = dl.headers_for(Delivery("a-users", 0, n, b"k", value, [("h", b"v")]),
                                 failure, group_id="g")
        letters.append(Delivery("dlq", 0, n, b"k", value, headers))
    publisher = _Publisher()
    done = dl.replay(letters, publisher, limit=None, job_id="j1", new_job_id=False)  # type: ignore[arg-type]
    assert [(r.job_id, r.offset) for r in done] == [("j1", 0), ("j1", 1)]
    topic, sent_value, key, headers = publisher.sent[0]
    assert (topic, sent_value, key) == ("a-users", value, b"k")
    assert headers == [("h", b"v"), ("__TypeId__", b"NodeExchange"), (dl.REPLAYED_FROM, b"dlq/0/0")]


def test_replay_with_a_new_job_id_rewrites_the_payload_and_respects_the_limit() -> None:
    value = orjson.dumps({"groupId": "g", "jobId": "old"})
    letters = [Delivery("dlq", 0, n, None, value, dl.headers_for(
        Delivery("a-users", 0, n, None, value), dl.Failure("import", "e", "X"), group_id="g"))
        for n in range(3)]
    publisher = _Publisher()
    done = dl.replay(letters, publisher, limit=2, job_id=None, new_job_id=True)  # type: ignore[arg-type]
    assert len(done) == 2 and all(r.new_job_id for r in done)
    assert orjson.loads(publisher.sent[0][1] or b"")["jobId"] == done[0].new_job_id


def test_replay_progress_moves_past_letters_handled_in_a_row_and_never_backwards() -> None:
    letters = [Delivery("dlq", p, o, None, b"") for p, o in
               [(0, 5), (1, 0), (0, 6), (0, 7), (1, 1), (2, 3)]]
    handled = {(0, 5), (0, 6), (1, 1), (2, 3)}  # (0, 7) and (1, 0) were left out
    assert dl.handled_up_to(letters, handled, {}) == {0: 7, 2: 4}
    # Partition 2 was recorded further on already (a --from-beginning replay): kept.
    assert dl.handled_up_to(letters, handled, {0: 5, 2: 9}) == {0: 7}
    assert dl.handled_up_to(letters, set(), {}) == {}
