"""``dlq replay`` on a real broker: what it replayed is remembered, so a second replay
picks up where the first stopped; a letter it left out holds its partition's place."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import yaml

from nodes_import.kafka import deadletter as dl
from tests.fixtures.kafka import KafkaTest

DOMAIN = "3f1c1a3e-2b9d-4c55-9a57-0d3c6a1f0b21"


def _letter(kafka: KafkaTest, job: str) -> None:
    """A dead letter of a job message from ``kafka.topic``, as the daemon writes one."""
    value = orjson.dumps({"groupId": "g", "domainId": DOMAIN, "referenceIds": ["r1"],
                          "jobId": job})
    kafka.send(value, key=job.encode(), topic=kafka.dlq, headers=[
        ("__TypeId__", b"NodeExchange"), (dl.H_TOPIC, kafka.topic.encode()),
        (dl.H_STAGE, b"import"), (dl.H_JOB_ID, job.encode())])


def _replay(kafka: KafkaTest, tmp_path: Path, *args: str) -> list[str]:
    config = tmp_path / "replay.yaml"
    config.write_text(yaml.safe_dump({"kafka": kafka.kafka_config()}))
    result = subprocess.run([sys.executable, "-m", "nodes_import", "--config", str(config),
                             "dlq", "replay", *args],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()


def _replayed_jobs(lines: list[str]) -> list[str]:
    return [line.split()[2] for line in lines if line.startswith("replayed job ")]


def test_a_second_replay_starts_where_the_first_stopped(kafka: KafkaTest,
                                                        tmp_path: Path) -> None:
    kafka.create_topic()
    kafka.create_topic(kafka.dlq)
    jobs = [str(uuid.uuid4()) for _ in range(4)]
    for job in jobs[:3]:
        _letter(kafka, job)

    first = _replay(kafka, tmp_path, "--limit", "2")
    assert _replayed_jobs(first) == jobs[:2]
    assert kafka.committed(kafka.dlq, group_id=dl.replay_group(kafka.group_id)) == {0: 2}

    second = _replay(kafka, tmp_path)
    assert _replayed_jobs(second) == [jobs[2]]
    assert second[-1].startswith("1 of 1 dead letters replayed (after those handled by earlier")

    _letter(kafka, jobs[3])
    assert _replayed_jobs(_replay(kafka, tmp_path, "--job-id", jobs[3])) == [jobs[3]]
    assert _replayed_jobs(_replay(kafka, tmp_path)) == []  # nothing left after it

    again = _replay(kafka, tmp_path, "--from-beginning")
    assert _replayed_jobs(again) == jobs
    replayed = kafka.read(kafka.topic, 2 + 1 + 1 + 4)
    assert [orjson.loads(m.value or b"")["jobId"] for m in replayed] == \
        [*jobs[:2], jobs[2], jobs[3], *jobs]
    assert kafka.committed(kafka.dlq, group_id=dl.replay_group(kafka.group_id)) == {0: 4}


def test_a_letter_left_out_by_job_id_is_replayed_by_the_next_replay(kafka: KafkaTest,
                                                                     tmp_path: Path) -> None:
    kafka.create_topic()
    kafka.create_topic(kafka.dlq)
    jobs = [str(uuid.uuid4()) for _ in range(3)]
    for job in jobs:
        _letter(kafka, job)
    assert _replayed_jobs(_replay(kafka, tmp_path, "--job-id", jobs[1])) == [jobs[1]]
    # The first letter was left out: nothing recorded, so the next replay sees all three
    # (the one already replayed goes again; job ids make that harmless).
    assert kafka.committed(kafka.dlq, group_id=dl.replay_group(kafka.group_id))[0] < 0
    assert _replayed_jobs(_replay(kafka, tmp_path)) == jobs
    assert _replayed_jobs(_replay(kafka, tmp_path)) == []
