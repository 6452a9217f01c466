"""``dlq list`` and ``dlq show`` on a real broker: the letters as the daemon writes them
(``deadletter.headers_for``), their error headers decoded, and no consumer offset moved."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import yaml

from nodes_import.kafka import deadletter as dl
from nodes_import.kafka.offsets import Delivery
from tests.fixtures.kafka import KafkaTest

DOMAIN = "3f1c1a3e-2b9d-4c55-9a57-0d3c6a1f0b21"


def _letter(kafka: KafkaTest, job: str | None, offset: int, *, stage: str = "import",
            message: str = "no such file: /data/x.csv.gz") -> None:
    """A dead letter of the message at ``offset`` of ``kafka.topic``, as the daemon writes it."""
    value = orjson.dumps({"groupId": "g", "domainId": DOMAIN, "file": "/data/x.csv.gz",
                          **({"jobId": job} if job else {})})
    original = Delivery(kafka.topic, 0, offset, (job or "").encode() or None, value,
                        headers=[("trace-id", b"abc")])
    failure = dl.Failure(stage, message, "nodes_import.errors.SourceError",
                         "Traceback (most recent call last):\n  boom\nSourceError: no such file",
                         job, {"status": "FAILED", "total": 0, "success": 0, "failed": 0,
                               "rowsCommitted": 0, "attempts": 1} if job else None)
    kafka.send(value, key=original.key, topic=kafka.dlq,
               headers=dl.headers_for(original, failure, group_id=kafka.group_id))


def _dlq(kafka: KafkaTest, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "dlq.yaml"
    config.write_text(yaml.safe_dump({"kafka": kafka.kafka_config()}))
    return subprocess.run([sys.executable, "-m", "nodes_import", "--config", str(config),
                           "dlq", *args], capture_output=True, text=True, timeout=60,
                          check=False)


def test_dlq_list_shows_the_most_recent_letters_newest_first_decoded(
        kafka: KafkaTest, tmp_path: Path) -> None:
    kafka.create_topic()
    kafka.create_topic(kafka.dlq)
    jobs = [str(uuid.uuid4()) for _ in range(4)]
    for n, job in enumerate(jobs):
        _letter(kafka, job, n)
    _letter(kafka, None, 9, stage="validate", message="domainId: not a UUID")
    listed = _dlq(kafka, tmp_path, "list", "--limit", "3", "--json")
    assert listed.returncode == 0, listed.stderr
    letters = orjson.loads(listed.stdout)
    assert [x["offset"] for x in letters] == [4, 3, 2]
    newest, job_letter = letters[0], letters[1]
    assert (newest["stage"], newest["job_id"], newest["message"]) == (
        "validate", None, "domainId: not a UUID")
    assert job_letter["job_id"] == jobs[3]
    assert job_letter["error_class"] == "nodes_import.errors.SourceError"
    assert job_letter["counts"]["status"] == "FAILED"  # the JSON header, decoded
    assert job_letter["origin"] == f"{kafka.topic}/0/3"
    assert ["trace-id", "abc"] in job_letter["headers"]
    text = _dlq(kafka, tmp_path, "list").stdout
    lines = text.splitlines()
    assert lines[1].startswith("0/4 ") and "SourceError: domainId: not a UUID" in lines[1]
    assert jobs[0] in lines[5] and lines[-1].startswith("5 dead letters on")


def test_dlq_show_gives_one_letter_whole_or_every_letter_of_a_job(
        kafka: KafkaTest, tmp_path: Path) -> None:
    kafka.create_topic()
    kafka.create_topic(kafka.dlq)
    job, other = str(uuid.uuid4()), str(uuid.uuid4())
    _letter(kafka, job, 0)
    _letter(kafka, other, 1)
    _letter(kafka, job, 0)  # at-least-once: the same job's letter again
    shown = _dlq(kafka, tmp_path, "show", "0/1")
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert text.startswith("dead letter 0/1 (")
    assert f"  job      {other}" in text
    assert "  error    nodes_import.errors.SourceError: no such file: /data/x.csv.gz" in text
    assert "status FAILED, total 0" in text and "header   trace-id: abc" in text
    assert "    SourceError: no such file" in text  # the stack trace
    assert orjson.loads(_dlq(kafka, tmp_path, "show", "1", "--json").stdout)["job_id"] == other
    both = orjson.loads(_dlq(kafka, tmp_path, "show", "--job-id", job, "--json").stdout)
    assert [x["offset"] for x in both] == [0, 2]
    missing = _dlq(kafka, tmp_path, "show", "0/99")
    assert missing.returncode == 1 and "no dead letter at 0/99" in missing.stderr
    assert _dlq(kafka, tmp_path, "show").returncode == 2
    assert _dlq(kafka, tmp_path, "show", "x/y").returncode == 2


def test_reading_the_dead_letters_moves_no_consumer_offset(kafka: KafkaTest,
                                                           tmp_path: Path) -> None:
    kafka.create_topic()
    kafka.create_topic(kafka.dlq)
    for n in range(3):
        _letter(kafka, str(uuid.uuid4()), n)
    groups = (kafka.group_id, dl.replay_group(kafka.group_id))
    before = {g: kafka.committed(kafka.dlq, group_id=g) for g in groups}
    assert _dlq(kafka, tmp_path, "list").returncode == 0
    assert _dlq(kafka, tmp_path, "show", "0/2").returncode == 0
    assert {g: kafka.committed(kafka.dlq, group_id=g) for g in groups} == before
    replayed = _dlq(kafka, tmp_path, "replay")  # a replay still sees every letter
    assert replayed.stdout.strip().splitlines()[-1] == "3 of 3 dead letters replayed"
