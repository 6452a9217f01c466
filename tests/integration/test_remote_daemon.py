"""Daemons on several "VMs": two ``nodes-import run`` processes in one consumer group, each
in its own empty working directory, importing jobs whose files and ID lists exist only in
the bucket (moto's S3 server, reached through the fault proxy)."""

from __future__ import annotations

import uuid
from pathlib import Path

import orjson

from nodes_import.cli.sample import write_reference_ids, write_users
from nodes_import.kafka import deadletter as dl
from tests.fixtures.daemon import Daemons
from tests.fixtures.faultproxy import FaultProxy
from tests.fixtures.kafka import KafkaTest, wait_until
from tests.fixtures.postgres import Database
from tests.fixtures.s3 import Bucket
from tests.integration.test_daemon import wait_status

DOMAIN = "3f1c1a3e-2b9d-4c55-9a57-0d3c6a1f0b21"


def _message(group: str, job_id: str, **fields: str) -> bytes:
    return orjson.dumps({"groupId": group, "domainId": DOMAIN, "jobId": job_id, **fields})


def _count(db: Database, group: str) -> int:
    return int(db.scalar("SELECT count(*) FROM nodes WHERE group_id = %s", (group,)))


def test_two_daemons_import_files_and_id_lists_that_are_only_in_the_bucket(
        daemons: Daemons, kafka: KafkaTest, db: Database, bucket: Bucket,
        s3_proxy: FaultProxy, tmp_path: Path) -> None:
    # What the producer uploads; its local copies are gone before any job is sent.
    producer = tmp_path / "producer"
    producer.mkdir()
    jobs: dict[str, tuple[str, dict[str, str], int]] = {}  # job id -> (group, field, rows)
    for n, rows in enumerate((3000, 2500, 1800, 1200)):
        path = write_users(producer / f"users{n}.csv.gz", rows, seed=n)
        jobs[str(uuid.uuid4())] = (f"file{n}", {"file": bucket.put(f"jobs/users{n}.csv.gz",
                                                                   path)}, rows)
    for name, count in (("ids.txt.gz", 30_000), ("ids.txt", 2_500)):
        path = write_reference_ids(producer / name, count, start=len(jobs) * 100_000)
        jobs[str(uuid.uuid4())] = (name.replace(".", "-"), {"referenceIdsFile": bucket.put(
            f"jobs/{name}", path)}, count)
    big = write_users(producer / "big.csv.gz", 120_000, seed=99)  # ~1.5 MB: 3 fetches
    bucket.put("jobs/big.csv.gz", big)
    small = write_users(producer / "small.csv.gz", 40_000, seed=98)
    bucket.put("jobs/replaced.csv.gz", small)
    bucket.put("other/users.csv.gz", small)
    other_version = write_users(producer / "v2.csv.gz", 40_000, seed=100).read_bytes()
    for path in producer.iterdir():
        path.unlink()

    kafka.create_topic(partitions=2)
    remote = {"allowed-uris": [f"s3://{bucket.name}/jobs/"],
              "s3": {"endpoint-override": f"http://127.0.0.1:{s3_proxy.port}"},
              "remote": {"retry-interval": {"ms": 50}}}
    started = []
    for vm in ("vm-a", "vm-b"):
        home = tmp_path / vm
        home.mkdir()
        started.append(daemons.start(wait=False, cwd=home, node={"import": {
            "allowed-roots": [str(home)], **remote}}))
    for daemon in started:
        daemon.wait_assigned()

    # 1. files and ID lists, spread over both partitions: exact counts
    for n, (job_id, (group, field, _)) in enumerate(jobs.items()):
        kafka.send(_message(group, job_id, **field), partition=n % 2, flush=False)
    kafka.flush()
    owners = set()
    for job_id, (group, _, rows) in jobs.items():
        row = wait_status(db, job_id, timeout=120)
        assert (row["total"], row["success"], row["failed"], row["inserted"]) == \
            (rows, rows, 0, rows), (group, row)
        assert _count(db, group) == rows
        owners.add(str(row["claimed_by"]).rsplit(":", 1)[1])
    assert owners == {str(d.pid) for d in started}  # both daemons imported

    # 2. a connection reset in the middle of an object: resumed, still exact. The job
    # reads 64 KiB (magic), 512 KiB (header), then the rows in fetches of 512 KiB and
    # 1 MiB: the cut lands in the second fetch of the rows.
    resumed_job = str(uuid.uuid4())
    s3_proxy.cut_download_after(1_300_000)
    kafka.send(_message("big", resumed_job, file=bucket.uri("jobs/big.csv.gz")), partition=0)
    row = wait_status(db, resumed_job, timeout=120)
    assert (row["total"], row["success"], row["failed"]) == (120_000, 120_000, 0)
    assert _count(db, "big") == 120_000
    assert s3_proxy.connections_cut == 1
    resumes = wait_until(lambda: [e for d in started
                                  for e in d.events("remote read interrupted; resuming")],
                         10, "the resume logged")
    assert len(resumes) == 1 and resumes[0]["offset"] > 0, resumes  # not from the start

    # 3. an object replaced while it is read: FAILED, clearly, nothing of it counted twice
    replaced_job = str(uuid.uuid4())
    s3_proxy.cut_download_after(300_000, before_cut=lambda: bucket.put(
        "jobs/replaced.csv.gz", other_version))
    kafka.send(_message("replaced", replaced_job, file=bucket.uri("jobs/replaced.csv.gz")),
               partition=1)
    failed = wait_status(db, replaced_job, "FAILED", timeout=120)
    assert "was replaced while it was read" in str(failed["error"])

    # 4. a URI outside the allow-list: refused and dead-lettered
    refused_job = str(uuid.uuid4())
    kafka.send(_message("refused", refused_job, file=bucket.uri("other/users.csv.gz")),
               partition=0)
    refused = wait_status(db, refused_job, "FAILED", timeout=60)
    assert "not under node.import.allowed-uris" in str(refused["error"])
    assert _count(db, "refused") == 0

    letters = {dl.header_map(d.headers)[dl.H_JOB_ID]: dl.header_map(d.headers)
               for d in kafka.read(kafka.dlq, 2)}
    assert letters[replaced_job][dl.H_CLASS] == "nodes_import.errors.SourceChangedError"
    assert letters[refused_job][dl.H_CLASS] == "nodes_import.errors.SourceRefusedError"
    assert letters[refused_job][dl.H_MESSAGE] == refused["error"]
    wait_until(lambda: sum(kafka.committed(partitions=2).values()) == len(jobs) + 3, 15,
               "every offset committed")
    for vm in ("vm-a", "vm-b"):
        assert list((tmp_path / vm).iterdir()) == []  # nothing local was needed
