"""The daemon end to end: real ``nodes-import run`` processes, a real broker, a real database."""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

import orjson

from nodes_import import deadletter as dl
from nodes_import.jobs import derived_job_id
from nodes_import.sample import write_reference_ids, write_users
from tests.fixtures.daemon import Daemons
from tests.fixtures.kafka import KafkaTest, wait_until
from tests.fixtures.postgres import Database

DOMAIN = "3f1c1a3e-2b9d-4c55-9a57-0d3c6a1f0b21"


def job_message(group: str = "g1", *, file: str | None = None, ids: list[str] | None = None,
                job_id: str | None = None) -> bytes:
    body: dict[str, object] = {"groupId": group, "domainId": DOMAIN}
    if file is not None:
        body["file"] = file
    if ids is not None:
        body["referenceIds"] = ids
    if job_id is not None:
        body["jobId"] = job_id
    return orjson.dumps(body)


def job_row(db: Database, job_id: str) -> dict[str, object] | None:
    rows = db.query("SELECT status, total_nodes, success_count, failed_count, inserted_count,"
                    " attempts, claimed_by, error, rows_committed FROM job_status WHERE id = %s",
                    (job_id,))
    if not rows:
        return None
    keys = ("status", "total", "success", "failed", "inserted", "attempts", "claimed_by",
            "error", "rows_committed")
    return dict(zip(keys, rows[0], strict=True))


def wait_status(db: Database, job_id: str, wanted: str = "COMPLETED",
                timeout: float = 60.0) -> dict[str, object]:
    def check() -> dict[str, object] | None:
        row = job_row(db, job_id)
        if row and row["status"] in ("COMPLETED", "FAILED"):
            assert row["status"] == wanted, row
            return row
        return None

    return wait_until(check, timeout, f"job {job_id} {wanted}")  # type: ignore[no-any-return]


def test_a_file_job_and_a_reference_id_job_are_imported_and_their_offsets_committed(
        daemons: Daemons, kafka: KafkaTest, db: Database, tmp_path: Path) -> None:
    kafka.create_topic()
    daemon = daemons.start()
    users = write_users(tmp_path / "users.csv.gz", 3000)
    file_job, ids_job = str(uuid.uuid4()), str(uuid.uuid4())
    kafka.send(job_message("files", file=str(users), job_id=file_job))
    kafka.send(job_message("ids", ids=[f"ref-{n}" for n in range(500)], job_id=ids_job))

    row = wait_status(db, file_job)
    assert (row["total"], row["success"], row["failed"], row["inserted"]) == (3000, 3000, 0, 3000)
    assert str(row["claimed_by"]).endswith(f":{daemon.pid}")
    row = wait_status(db, ids_job)
    assert (row["total"], row["success"], row["inserted"]) == (500, 500, 500)
    assert db.scalar("SELECT count(*) FROM nodes WHERE group_id = 'files'") == 3000
    assert db.scalar("SELECT count(*) FROM nodes WHERE group_id = 'ids'") == 500
    wait_until(lambda: kafka.committed() == {0: 2}, 10, "offset 2 committed")


def test_malformed_messages_are_dead_lettered_with_their_reason_and_the_consumer_carries_on(
        daemons: Daemons, kafka: KafkaTest, db: Database) -> None:
    kafka.create_topic()
    daemons.start()
    ok = {"groupId": "g", "domainId": DOMAIN, "referenceIds": ["a"]}
    cases: list[tuple[bytes | None, str, str]] = [
        (None, "parse", "empty message (null value)"),
        (b"", "parse", "empty message (zero bytes)"),
        (b"   ", "parse", "blank message"),
        (b"{not json", "parse", "not valid JSON"),
        (b"[1, 2]", "parse", "expected a JSON object, got array"),
        (orjson.dumps({**ok, "groupId": 5}), "validate", "groupId: expected a string, got number"),
        (orjson.dumps({"groupId": "g", "referenceIds": ["a"]}), "validate", "domainId is missing"),
        (orjson.dumps({**ok, "domainId": "nope"}), "validate", "domainId: not a UUID"),
        (orjson.dumps({**ok, "file": "/x.csv.gz"}), "validate", "both file and referenceIds"),
        (orjson.dumps({"groupId": "g", "domainId": DOMAIN}), "validate", "neither file nor"),
        (orjson.dumps({**ok, "referenceIds": "a,b"}), "validate", "referenceIds: expected an array"),
        (orjson.dumps({**ok, "referenceIds": ["a", 7]}), "validate", "referenceIds[1]: expected a"),
        (orjson.dumps({**ok, "jobId": "x"}), "validate", "jobId: not a UUID"),
        (orjson.dumps({**ok, "groupId": "  "}), "validate", "groupId is blank"),
    ]
    for value, _, _ in cases:
        kafka.send(value, key=b"k1", headers=[("trace-id", b"abc"), ("trace-id", b"def")],
                   flush=False)
    missing_job = str(uuid.uuid4())
    kafka.send(orjson.dumps({"groupId": "g", "domainId": DOMAIN, "file": "/nowhere/x.csv.gz",
                             "jobId": missing_job}), flush=False)
    good_job = str(uuid.uuid4())
    kafka.send(orjson.dumps({**ok, "jobId": good_job}))

    wait_status(db, good_job)
    failed = wait_status(db, missing_job, "FAILED")
    letters = kafka.read(kafka.dlq, len(cases) + 1)
    by_offset = {int(dl.header_map(d.headers)[dl.H_OFFSET]): d for d in letters}
    for offset, (value, stage, reason) in enumerate(cases):
        letter = by_offset[offset]
        info = dl.header_map(letter.headers)
        assert info[dl.H_STAGE] == stage, (offset, info)
        assert reason in info[dl.H_MESSAGE], (offset, info[dl.H_MESSAGE])
        assert info[dl.H_TOPIC] == kafka.topic and info[dl.H_PARTITION] == "0"
        assert info[dl.H_CLASS] == "nodes_import.payload.MessageRejected"
        assert info[dl.H_GROUP] == kafka.group_id and info[dl.TYPE_ID] == "NodeExchange"
        assert dl.H_TIMESTAMP in info and dl.H_INSTANCE in info
        assert letter.key == b"k1" and (letter.value or b"") == (value or b"")
        assert letter.headers[:2] == [("trace-id", b"abc"), ("trace-id", b"def")]
    info = dl.header_map(by_offset[len(cases)].headers)
    assert info[dl.H_STAGE] == "import" and info[dl.H_JOB_ID] == missing_job
    assert info[dl.H_MESSAGE] == failed["error"]
    assert orjson.loads(info[dl.H_COUNTS])["status"] == "FAILED"
    wait_until(lambda: kafka.committed() == {0: len(cases) + 2}, 10, "every offset committed")


def test_a_redelivered_message_does_not_import_again(
        daemons: Daemons, kafka: KafkaTest, db: Database, tmp_path: Path) -> None:
    kafka.create_topic()
    first = daemons.start()
    users = write_users(tmp_path / "u.csv.gz", 1000)
    kafka.send(job_message(file=str(users)))  # no jobId: derived from topic/partition/offset
    given = str(uuid.uuid4())
    kafka.send(job_message(ids=["x", "y"], job_id=given))
    kafka.send(job_message(ids=["x", "y"], job_id=given))  # a producer retry, same key
    derived = derived_job_id(kafka.topic, 0, 0)
    wait_status(db, derived)
    wait_status(db, given)
    wait_until(lambda: kafka.committed() == {0: 3}, 10, "offsets committed")
    first.signal(signal.SIGTERM)
    assert first.wait() == 0
    before = db.query("SELECT id, status, total_nodes, inserted_count, attempts, updated_at"
                      " FROM job_status ORDER BY id")
    # A new group reads the topic again from the start: every message is redelivered.
    second = daemons.start(kafka={"group-id": kafka.group_id + "-again"})
    wait_until(lambda: kafka.committed(group_id=kafka.group_id + "-again") == {0: 3}, 20,
               "the redelivered offsets committed")
    assert len(second.events("job already finished; skipped")) == 3
    assert db.query("SELECT id, status, total_nodes, inserted_count, attempts, updated_at"
                    " FROM job_status ORDER BY id") == before
    assert db.scalar("SELECT count(*) FROM nodes") == 1002


def test_sigterm_drains_in_flight_batches_exits_0_and_the_job_resumes_on_the_next_start(
        daemons: Daemons, kafka: KafkaTest, db: Database, tmp_path: Path) -> None:
    kafka.create_topic()
    daemon = daemons.start()
    users = write_users(tmp_path / "big.csv.gz", 60_000)
    job = str(uuid.uuid4())
    kafka.send(job_message(file=str(users), job_id=job))
    wait_until(lambda: (job_row(db, job) or {}).get("rows_committed", 0) > 0, 30,
               "the first batches committed")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(20) == 0, daemon.log_text()
    row = job_row(db, job)
    assert row is not None and row["status"] in ("PROCESSING", "COMPLETED")
    assert daemon.events("drained") and daemon.events("daemon stopped")
    if row["status"] == "PROCESSING":
        assert kafka.committed() != {0: 1}  # not done: its offset waits
    daemons.start()
    row = wait_status(db, job)
    assert (row["total"], row["success"], row["inserted"]) == (60_000, 60_000, 60_000)
    assert db.scalar("SELECT count(*) FROM nodes") == 60_000


def test_a_daemon_killed_mid_job_is_taken_over_after_its_lease_with_exact_counts(
        daemons: Daemons, kafka: KafkaTest, db: Database, tmp_path: Path) -> None:
    kafka.create_topic()
    # A lease longer than the group's takeover (~3 s), so the new owner must wait for it.
    lease = {"import": {"lease-timeout": {"ms": 6000}, "heartbeat-interval": {"ms": 1000}}}
    daemon = daemons.start(node=lease)
    users = write_users(tmp_path / "big.csv.gz", 60_000)
    job = str(uuid.uuid4())
    kafka.send(job_message(file=str(users), job_id=job))
    wait_until(lambda: (job_row(db, job) or {}).get("rows_committed", 0) > 0, 30,
               "the first batches committed")
    daemon.signal(signal.SIGKILL)  # the daemon alone: its workers die with it (PDEATHSIG)
    daemon.wait(10)
    row = job_row(db, job)
    assert row is not None and row["status"] == "PROCESSING", row
    dead_owner = row["claimed_by"]
    second = daemons.start(node=lease)
    row = wait_status(db, job)
    assert (row["total"], row["success"], row["inserted"]) == (60_000, 60_000, 60_000)
    assert row["claimed_by"] != dead_owner and row["attempts"] == 2
    assert db.scalar("SELECT count(*) FROM nodes") == 60_000
    assert second.events("job leased by another daemon; waiting")


def test_a_worker_killed_mid_job_is_replaced_and_the_job_resumes_with_exact_counts(
        daemons: Daemons, kafka: KafkaTest, db: Database, tmp_path: Path) -> None:
    import psutil

    kafka.create_topic()
    daemon = daemons.start()
    users = write_users(tmp_path / "big.csv.gz", 60_000)
    job = str(uuid.uuid4())
    kafka.send(job_message(file=str(users), job_id=job))
    wait_until(lambda: (job_row(db, job) or {}).get("rows_committed", 0) > 0, 30,
               "the first batches committed")
    for child in psutil.Process(daemon.pid).children():
        if "multiprocessing" in " ".join(child.cmdline()):
            child.kill()
    row = wait_status(db, job)
    assert (row["total"], row["success"], row["inserted"]) == (60_000, 60_000, 60_000)
    assert db.scalar("SELECT count(*) FROM nodes") == 60_000
    assert daemon.events("process pool broken; replacing it")
    assert daemon.proc.poll() is None


def test_reference_id_files_submitted_through_the_cli_are_imported(
        daemons: Daemons, kafka: KafkaTest, db: Database, tmp_path: Path) -> None:
    import subprocess
    import sys

    kafka.create_topic()
    daemons.start()
    ids = write_reference_ids(tmp_path / "ids.txt", 300)
    config = tmp_path / "daemon0.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "nodes_import", "--config", str(config), "submit",
         "--reference-ids", str(ids), "--group", "cli", "--domain", DOMAIN],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip()
    row = wait_status(db, job)
    assert (row["total"], row["inserted"]) == (300, 300)
