"""The daemon end to end: real ``nodes-import run`` processes, a real broker, a real database."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psutil
import psycopg
import pytest

from nodes_import.cli.sample import write_reference_ids, write_users
from nodes_import.jobs import derived_job_id
from nodes_import.kafka import deadletter as dl
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


@contextlib.contextmanager
def nodes_locked(db: Database) -> Iterator[psycopg.Connection[Any]]:
    """Hold a lock on ``nodes`` that every batch write waits on (reads go on): a job stays
    running, its open batch uncommitted, for as long as the test needs; released (rolled
    back) on exit, or earlier with ``rollback()`` on the connection yielded."""
    with psycopg.connect(db.dsn) as conn:
        conn.execute("LOCK TABLE nodes IN SHARE MODE")
        try:
            yield conn
        finally:
            conn.rollback()


def batches_waiting(db: Database) -> list[int]:
    """The backends whose batch waits on ``nodes_locked``'s lock: their pids."""
    return [r[0] for r in db.query("SELECT pid FROM pg_locks WHERE NOT granted"
                                   " AND relation = 'nodes'::regclass")]


def daemon_workers(pid: int) -> list[psutil.Process]:
    """The daemon's worker processes (not the resource tracker)."""
    workers = []
    for child in psutil.Process(pid).children():
        with contextlib.suppress(psutil.NoSuchProcess):
            if "spawn_main" in " ".join(child.cmdline()):
                workers.append(child)
    return workers


def gone(processes: list[psutil.Process]) -> bool:
    """Every one of ``processes`` has exited (a zombie counts as exited)."""
    def alive(p: psutil.Process) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
    return not any(alive(p) for p in processes)


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
        (orjson.dumps({**ok, "referenceIds": "a,b"}), "validate",
         "referenceIds: expected an array"),
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
        assert info[dl.H_CLASS] == "nodes_import.kafka.payload.MessageRejected"
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


def _send_big_job_held_after_its_first_batch(kafka: KafkaTest, db: Database, tmp_path: Path,
                                            locker: psycopg.Connection[Any]) -> str:
    """A 60,000-row job, sent under ``nodes_locked``: one batch let through, the next one
    held on the lock, so it is mid-job with rows committed on any machine; its id."""
    users = write_users(tmp_path / "big.csv.gz", 60_000)
    job = str(uuid.uuid4())
    kafka.send(job_message(file=str(users), job_id=job))
    wait_until(lambda: batches_waiting(db), 30, "the job's first batch waiting")
    locker.rollback()  # the waiting batch gets the table...
    # ...and this lock, queued behind it, is granted before the job's next batch asks
    locker.execute("LOCK TABLE nodes IN SHARE MODE")
    wait_until(lambda: batches_waiting(db), 30, "the job's next batch waiting")
    row = job_row(db, job)
    assert row is not None and int(str(row["rows_committed"])) > 0, row
    return job


def test_sigterm_drains_in_flight_batches_exits_0_and_the_job_resumes_on_the_next_start(
        daemons: Daemons, kafka: KafkaTest, db: Database, tmp_path: Path) -> None:
    kafka.create_topic()
    daemon = daemons.start()
    users = write_users(tmp_path / "big.csv.gz", 60_000)
    job = str(uuid.uuid4())
    with nodes_locked(db) as locker:  # the job mid-batch when the signal comes
        kafka.send(job_message(file=str(users), job_id=job))
        wait_until(lambda: batches_waiting(db), 30, "the job's first batch waiting")
        daemon.signal(signal.SIGTERM)
        wait_until(lambda: daemon.events("stopping: draining in-flight jobs"), 10,
                   "the drain begun")
        locker.rollback()  # the open batch may finish now: the drain waits for it
        assert daemon.wait(60) == 0, daemon.log_text()[-3000:]
    row = job_row(db, job)
    assert row is not None and row["status"] == "PROCESSING", row
    assert 0 < int(str(row["rows_committed"])) < 60_000  # stopped at a checkpoint
    assert [e["jobsLeft"] for e in daemon.events("drained")] == [0]
    assert daemon.events("daemon stopped")
    assert kafka.committed() != {0: 1}  # not done: its offset waits
    daemons.start()
    row = wait_status(db, job)
    assert (row["total"], row["success"], row["inserted"]) == (60_000, 60_000, 60_000)
    assert db.scalar("SELECT count(*) FROM nodes") == 60_000


def test_a_second_signal_exits_at_once_and_takes_the_workers_along(
        daemons: Daemons, kafka: KafkaTest, db: Database, tmp_path: Path) -> None:
    kafka.create_topic()
    # a drain that would wait 10 minutes for the held batch: only the second signal ends it
    daemon = daemons.start(node={"import": {"drain-timeout": {"ms": 600_000}}})
    users = write_users(tmp_path / "big.csv.gz", 60_000)
    job = str(uuid.uuid4())
    with nodes_locked(db):
        kafka.send(job_message(file=str(users), job_id=job))
        wait_until(lambda: batches_waiting(db), 30, "the job's first batch waiting")
        workers = daemon_workers(daemon.pid)
        daemon.signal(signal.SIGTERM)
        wait_until(lambda: daemon.events("signal received: stopping"), 10, "the first signal",
                   every=0.01)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 128 + signal.SIGTERM  # far inside the drain timeout
        wait_until(lambda: gone(workers), 10, "the workers gone")
    row = job_row(db, job)
    assert row is not None and (row["status"], row["rows_committed"]) == ("PROCESSING", 0)


def test_a_daemon_killed_mid_job_takes_its_workers_along_and_is_taken_over_after_its_lease(
        daemons: Daemons, kafka: KafkaTest, db: Database, tmp_path: Path) -> None:
    kafka.create_topic()
    # A lease longer than the group's takeover (~3 s), so the new owner must wait for it.
    lease = {"import": {"lease-timeout": {"ms": 6000}, "heartbeat-interval": {"ms": 1000}}}
    daemon = daemons.start(node=lease)
    users = write_users(tmp_path / "big.csv.gz", 60_000)
    job = str(uuid.uuid4())
    with nodes_locked(db):  # the job is mid-batch, whatever the machine's speed
        kafka.send(job_message(file=str(users), job_id=job))
        wait_until(lambda: batches_waiting(db), 30, "the job's first batch waiting")
        workers = daemon_workers(daemon.pid)
        assert workers
        daemon.signal(signal.SIGKILL)  # the daemon alone: its workers die with it (PDEATHSIG)
        daemon.wait(10)
        wait_until(lambda: gone(workers), 10, "no worker outliving its daemon")
    row = job_row(db, job)
    assert row is not None and (row["status"], row["rows_committed"]) == ("PROCESSING", 0), row
    dead_owner = row["claimed_by"]
    second = daemons.start(node=lease)
    # The dead daemon's lease is kept live (a beat of its heartbeat each check) until the
    # new owner has met it: the group's takeover may outlast 6 s on a loaded machine.
    # Then it is left to run out, and the new owner takes the job over.
    def met_the_live_lease() -> bool:
        db.query("UPDATE job_status SET heartbeat_at = now() WHERE id = %s"
                 " AND claimed_by = %s RETURNING 1", (job, dead_owner))
        return bool(second.events("job leased by another daemon; waiting"))

    wait_until(met_the_live_lease, 60, "the new owner waiting for the dead one's lease",
               every=0.5)
    row = wait_status(db, job)
    assert (row["total"], row["success"], row["inserted"]) == (60_000, 60_000, 60_000)
    assert row["claimed_by"] != dead_owner and row["attempts"] == 2
    assert db.scalar("SELECT count(*) FROM nodes") == 60_000


def test_a_drain_timeout_that_runs_out_kills_the_workers_rolls_back_and_exits_0(
        daemons: Daemons, kafka: KafkaTest, db: Database, tmp_path: Path) -> None:
    """SIGTERM while a batch cannot finish (it waits on a lock): past the drain timeout
    the workers are killed, the open batch rolls back, the leases are released and the
    daemon exits 0."""
    kafka.create_topic()
    daemon = daemons.start(node={"import": {"drain-timeout": {"ms": 1500},
                                            "lease-timeout": {"ms": 60_000}}})
    users = write_users(tmp_path / "big.csv.gz", 20_000)
    job = str(uuid.uuid4())
    with nodes_locked(db):
        kafka.send(job_message(file=str(users), job_id=job))
        waiting = wait_until(lambda: batches_waiting(db), 30, "the job's first batch waiting")
        workers = daemon_workers(daemon.pid)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.log_text()[-3000:]
        assert gone(workers)
        assert [e["jobsLeft"] for e in daemon.events("drained")] == [1]
        assert daemon.events("daemon stopped")
        row = db.query("SELECT status, rows_committed, heartbeat_at FROM job_status"
                       " WHERE id = %s", (job,))
        assert row == [("PROCESSING", 0, None)]  # the lease released: resumable at once
    # the killed worker's backend gets the lock, finds its client gone and rolls back
    wait_until(lambda: not db.query("SELECT 1 FROM pg_stat_activity WHERE pid = ANY(%s)",
                                    (waiting,)), 30, "the open batch's backend ended")
    assert db.scalar("SELECT count(*) FROM nodes") == 0
    assert db.scalar("SELECT rows_committed FROM job_status WHERE id = %s", (job,)) == 0


def test_a_worker_killed_mid_job_is_replaced_and_the_job_resumes_with_exact_counts(
        daemons: Daemons, kafka: KafkaTest, db: Database, tmp_path: Path) -> None:
    kafka.create_topic()
    daemon = daemons.start()
    with nodes_locked(db) as locker:
        job = _send_big_job_held_after_its_first_batch(kafka, db, tmp_path, locker)
        assert _kill_workers(daemon.pid) > 0
    row = wait_status(db, job)
    assert (row["total"], row["success"], row["inserted"]) == (60_000, 60_000, 60_000)
    assert db.scalar("SELECT count(*) FROM nodes") == 60_000
    assert daemon.events("process pool broken; replacing it")
    assert daemon.proc.poll() is None


def _kill_workers(pid: int) -> int:
    """SIGKILL the daemon's worker processes, chosen before the first dies (the daemon
    then ends the survivors itself, and a child read afterwards may be gone); how many."""
    killed = 0
    for child in daemon_workers(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
            killed += 1
    return killed


def test_a_job_whose_worker_keeps_dying_is_failed_and_dead_lettered(
        daemons: Daemons, kafka: KafkaTest, db: Database, tmp_path: Path) -> None:
    kafka.create_topic()
    daemon = daemons.start(node={"import": {"executor": {"max-job-crashes": 1}}})
    with nodes_locked(db) as locker:
        job = _send_big_job_held_after_its_first_batch(kafka, db, tmp_path, locker)
        assert _kill_workers(daemon.pid) > 0
        row = wait_status(db, job, "FAILED")
    assert "worker process died 1 times" in str(row["error"])
    info = dl.header_map(kafka.read(kafka.dlq, 1)[0].headers)
    assert info[dl.H_STAGE] == "import" and info[dl.H_JOB_ID] == job
    assert info[dl.H_CLASS] == "nodes_import.errors.WorkerDiedError"
    assert orjson.loads(info[dl.H_COUNTS])["rowsCommitted"] > 0
    wait_until(lambda: kafka.committed() == {0: 1}, 10, "its offset committed")
    assert daemon.proc.poll() is None


def test_a_worker_death_counts_a_crash_only_for_its_own_job_and_ends_the_other_workers(
        daemons: Daemons, kafka: KafkaTest, db: Database, tmp_path: Path) -> None:
    """Two jobs on two workers; one worker is killed. With max-job-crashes 1, its job is
    FAILED; the other job, interrupted only because the pool broke, resumes and COMPLETES,
    and the other old worker is ended at once instead of finishing that job alongside."""
    size = 30_000
    kafka.create_topic()
    # small-job-workers 0: both workers may take a large job (the default keeps one for
    # small jobs)
    daemon = daemons.start(node={"import": {"executor": {"max-job-crashes": 1,
                                                         "small-job-workers": 0},
                                            "batch": {"size": 5000}}})
    jobs = {}
    with nodes_locked(db):  # both jobs mid-batch when the worker dies, on any machine
        for group in ("first", "second"):
            users = write_users(tmp_path / f"{group}.csv.gz", size)
            jobs[group] = str(uuid.uuid4())
            kafka.send(job_message(group, file=str(users), job_id=jobs[group]))
        wait_until(lambda: len(batches_waiting(db)) == 2, 60, "both jobs running")
        busy = daemon_workers(daemon.pid)
        assert len(busy) == 2, [(w.pid, w.cmdline()) for w in busy]
        busy[0].kill()
        wait_until(lambda: gone(busy[1:]), 5, "the other old worker ended")
    rows = {}
    for group, job in jobs.items():
        wait_until(lambda j=job: (job_row(db, j) or {}).get("status") in ("COMPLETED", "FAILED"),
                   120, f"job {group} ended")
        rows[group] = job_row(db, job)
    statuses = sorted(str(r["status"]) for r in rows.values())
    assert statuses == ["COMPLETED", "FAILED"], rows
    done = next(r for r in rows.values() if r["status"] == "COMPLETED")
    assert (done["total"], done["success"], done["inserted"]) == (size, size, size)
    failed = next(r for r in rows.values() if r["status"] == "FAILED")
    assert "worker process died 1 times" in str(failed["error"])
    assert daemon.events("job interrupted by another worker's death; it resumes on a new worker")
    assert daemon.proc.poll() is None


def test_reference_id_files_submitted_through_the_cli_are_imported(
        daemons: Daemons, kafka: KafkaTest, db: Database, tmp_path: Path) -> None:

    kafka.create_topic()
    daemons.start()
    ids = write_reference_ids(tmp_path / "ids.txt", 300)
    config = tmp_path / "daemon0.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "nodes_import", "--config", str(config), "submit",
         "--reference-ids", str(ids), "--group", "cli", "--domain", DOMAIN],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip()
    row = wait_status(db, job)
    assert (row["total"], row["inserted"]) == (300, 300)


def _burst(kafka: KafkaTest, jobs: int, partitions: int) -> list[str]:
    ids = []
    for n in range(jobs):
        job = str(uuid.uuid4())
        ids.append(job)
        kafka.send(job_message(f"b{n}", ids=[f"r{k}" for k in range(5)], job_id=job),
                   partition=n % partitions, flush=False)
    kafka.flush()
    return ids


def test_pause_mode_with_a_tiny_queue_imports_every_job_of_a_burst_and_fails_none(
        daemons: Daemons, kafka: KafkaTest, db: Database) -> None:
    kafka.create_topic(partitions=4)
    daemon = daemons.start(node={"import": {"backpressure": "pause",
                                            "executor": {"queue-capacity": 2}}},
                           log_level="DEBUG")
    # The first jobs cannot write while this lock is held: the window stays full long
    # enough (admission.PAUSE_AFTER_S) for the partitions to be paused.
    with psycopg.connect(db.dsn) as locker:
        locker.execute("LOCK TABLE nodes IN SHARE ROW EXCLUSIVE MODE")
        jobs = _burst(kafka, 200, 4)
        wait_until(lambda: daemon.events("window full: partitions paused"), 30,
                   "partitions paused")  # logged at DEBUG
        assert db.scalar("SELECT count(*) FROM job_status") <= 2  # nothing taken past it
        locker.rollback()
    wait_until(lambda: db.scalar("SELECT count(*) FROM job_status WHERE status IN"
                                 " ('COMPLETED', 'FAILED')") == 200, 90, "200 jobs finished")
    assert db.query("SELECT status, count(*), sum(total_nodes), sum(inserted_count)"
                    " FROM job_status GROUP BY status") == [("COMPLETED", 200, 1000, 1000)]
    assert db.scalar("SELECT count(*) FROM nodes") == 1000
    assert {r[0] for r in db.query("SELECT id::text FROM job_status")} == set(jobs)
    assert daemon.events("partitions resumed")
    wait_until(lambda: sum(kafka.committed(partitions=4).values()) == 200, 10,
               "every offset committed")


def test_a_burst_of_small_jobs_is_written_in_bundles_of_several_jobs_per_commit(
        daemons: Daemons, kafka: KafkaTest, db: Database) -> None:
    kafka.create_topic(partitions=4)
    daemon = daemons.start(node={"import": {"executor": {"queue-capacity": 100}}})
    jobs = _burst(kafka, 120, 4)
    wait_until(lambda: db.scalar("SELECT count(*) FROM job_status WHERE status IN"
                                 " ('COMPLETED', 'FAILED')") == 120, 90, "120 jobs finished")
    assert db.query("SELECT status, count(*), sum(total_nodes), sum(inserted_count),"
                    " sum(attempts) FROM job_status GROUP BY status") == [
        ("COMPLETED", 120, 600, 600, 120)]
    assert db.scalar("SELECT count(*) FROM nodes") == 600
    # now() is the transaction's start: jobs completed together share their finished_at
    commits = db.scalar("SELECT count(DISTINCT finished_at) FROM job_status")
    assert commits < 60, f"{commits} commits for 120 jobs: not bundled"
    submitted = daemon.events("job submitted")
    assert {e["jobId"] for e in submitted} == set(jobs)
    assert max(e.get("bundle", 1) for e in submitted) > 1
    wait_until(lambda: sum(kafka.committed(partitions=4).values()) == 120, 10,
               "every offset committed")


def test_a_small_job_completes_while_large_jobs_occupy_the_workers(
        daemons: Daemons, kafka: KafkaTest, db: Database, tmp_path: Path) -> None:
    """Issue 17: 2 workers, one of them for small jobs (the default). Three large jobs
    queue for the other; a small job sent after them runs on its own worker and completes
    before even the first of them (first come, first served, it would wait for a worker
    behind the third), and the large ones run one at a time."""
    kafka.create_topic()
    daemon = daemons.start(node={"import": {"batch": {"size": 5000}}})
    users = write_users(tmp_path / "users.csv.gz", 100_000)
    large = [str(uuid.uuid4()) for _ in range(3)]
    for n, job in enumerate(large):
        kafka.send(job_message(f"large{n}", file=str(users), job_id=job))
    wait_until(lambda: (job_row(db, large[0]) or {}).get("rows_committed", 0) > 0, 60,
               "the first large job writing")
    small = str(uuid.uuid4())
    kafka.send(job_message("small", ids=["a", "b", "c"], job_id=small))
    row = wait_status(db, small, timeout=120)
    assert (row["total"], row["inserted"]) == (3, 3)
    for job in large:
        row = wait_status(db, job, timeout=180)
        assert (row["total"], row["inserted"]) == (100_000, 100_000)
    ends = dict(db.query("SELECT id::text, finished_at FROM job_status"
                         " WHERE id = ANY(%s::uuid[])", ([small, *large],)))
    assert ends[small] < min(ends[j] for j in large)
    spans = sorted(db.query("SELECT started_at, finished_at FROM job_status"
                            " WHERE id = ANY(%s::uuid[])", (large,)))
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))  # one at a time
    submitted = {e["jobId"]: e for e in daemon.events("job submitted")}
    assert submitted[large[2]]["queuedMs"] > 0


def test_reject_mode_fails_the_overflow_as_overloaded_and_dead_letters_it(
        daemons: Daemons, kafka: KafkaTest, db: Database) -> None:
    kafka.create_topic(partitions=4)
    daemons.start(node={"import": {"backpressure": "reject",
                                   "executor": {"queue-capacity": 2}}})
    _burst(kafka, 200, 4)
    wait_until(lambda: db.scalar("SELECT count(*) FROM job_status WHERE status IN"
                                 " ('COMPLETED', 'FAILED')") == 200, 90, "200 jobs finished")
    completed = db.scalar("SELECT count(*) FROM job_status WHERE status = 'COMPLETED'")
    failed = db.scalar("SELECT count(*) FROM job_status WHERE status = 'FAILED'"
                       " AND error = 'System overloaded' AND total_nodes = 0")
    assert completed + failed == 200 and failed > 0 and completed >= 2
    assert db.scalar("SELECT count(*) FROM nodes") == 5 * completed
    letters = kafka.read(kafka.dlq, failed)
    stages = {dl.header_map(d.headers)[dl.H_STAGE] for d in letters}
    assert stages == {"backpressure"} and len(letters) == failed
    assert {dl.header_map(d.headers)[dl.H_JOB_ID] for d in letters} == {
        r[0] for r in db.query("SELECT id::text FROM job_status WHERE status = 'FAILED'")}
    wait_until(lambda: sum(kafka.committed(partitions=4).values()) == 200, 10,
               "every offset committed")


def test_two_daemons_split_the_partitions_and_one_finishes_the_work_of_the_other_when_killed(
        daemons: Daemons, kafka: KafkaTest, db: Database, tmp_path: Path) -> None:
    kafka.create_topic(partitions=4)
    first = daemons.start()
    second = daemons.start()
    wait_until(lambda: len(first.events("partitions assigned")) >= 2
               and second.events("partitions assigned"), 20, "the group rebalanced")
    files = [write_users(tmp_path / f"u{n}.csv.gz", 20_000, start=n * 20_000) for n in range(8)]
    jobs = []
    for n, path in enumerate(files):
        jobs.append(str(uuid.uuid4()))
        kafka.send(job_message(file=str(path), job_id=jobs[-1]), partition=n % 4, flush=False)
    kafka.flush()
    owners = {f":{first.pid}", f":{second.pid}"}

    def both_busy() -> bool:
        holders = {str(r[0]).rsplit(":", 1)[-1] for r in db.query(
            "SELECT claimed_by FROM job_status WHERE claimed_by IS NOT NULL")}
        return {o[1:] for o in owners} <= holders

    wait_until(both_busy, 30, "both daemons running jobs")
    first.signal(signal.SIGKILL)
    first.wait(10)
    wait_until(lambda: db.scalar("SELECT count(*) FROM job_status WHERE status = 'COMPLETED'")
               == 8, 90, "all 8 jobs completed")
    assert db.scalar("SELECT sum(total_nodes) FROM job_status") == 160_000
    assert db.scalar("SELECT count(*) FROM nodes") == 160_000
    assert db.scalar("SELECT count(*) FROM job_status WHERE status = 'FAILED'") == 0
    assert second.proc.poll() is None


def test_after_a_rebalance_the_new_owner_waits_for_a_live_lease_and_never_runs_a_job_twice(
        daemons: Daemons, kafka: KafkaTest, db: Database, tmp_path: Path) -> None:
    # Both jobs are held mid-batch on a lock the test takes until the rebalance has handed
    # a partition to the second daemon and it has met the live lease: no race between a
    # job's length and the rebalance (~1-3 s on Tansu), whatever the machine's speed.
    rows = 20_000
    kafka.create_topic(partitions=2)
    # small-job-workers 0: both large jobs run at once on the first daemon
    lanes = {"node": {"import": {"executor": {"small-job-workers": 0}}}}
    first = daemons.start(**lanes)
    jobs = [str(uuid.uuid4()) for _ in range(2)]
    with nodes_locked(db):
        for n, job in enumerate(jobs):
            users = write_users(tmp_path / f"u{n}.csv.gz", rows, start=n * rows)
            kafka.send(job_message(file=str(users), job_id=job), partition=n)
        wait_until(lambda: len(batches_waiting(db)) == 2, 30,
                   "both jobs mid-batch on the first daemon")
        second = daemons.start(**lanes)  # the group rebalances: one partition moves to it
        wait_until(lambda: second.events("job leased by another daemon; waiting"), 30,
                   "the new owner waiting for the live lease")
    for job in jobs:
        row = wait_status(db, job)
        assert (row["total"], row["inserted"], row["attempts"]) == (rows, rows, 1)
        assert str(row["claimed_by"]).endswith(f":{first.pid}")
    wait_until(lambda: second.events("job already finished; skipped"), 20,
               "the new owner skipping the finished job")
    wait_until(lambda: kafka.committed(partitions=2) == {0: 1, 1: 1}, 20, "both committed")
    assert db.scalar("SELECT count(*) FROM nodes") == 2 * rows
    assert not second.events("job submitted")  # it never ran either job


def test_dlq_replay_with_a_new_job_id_reruns_a_job_once_its_problem_is_fixed(
        daemons: Daemons, kafka: KafkaTest, db: Database, tmp_path: Path) -> None:

    kafka.create_topic()
    daemons.start()
    source = tmp_path / "later.csv.gz"
    job = str(uuid.uuid4())
    kafka.send(job_message(file=str(source), job_id=job))
    wait_status(db, job, "FAILED")
    write_users(source, 700)  # the fix: the file is there now
    result = subprocess.run(
        [sys.executable, "-m", "nodes_import", "--config", str(tmp_path / "daemon0.yaml"),
         "dlq", "replay", "--job-id", job, "--new-job-id"],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "1 of 1 dead letters replayed" in result.stdout
    fresh = result.stdout.split(" as job ")[1].split()[0]
    row = wait_status(db, fresh)
    assert (row["total"], row["inserted"]) == (700, 700)
    replayed = kafka.read(kafka.topic, 2)[1]
    origin = dl.header_map(replayed.headers)[dl.REPLAYED_FROM]
    assert origin.startswith(f"{kafka.dlq}/") and origin.endswith("/0")
    assert not any(k.startswith(dl.PREFIX) for k, _ in replayed.headers)


def test_run_fails_fast_with_a_clear_message_when_the_broker_or_database_is_unreachable(
        tmp_path: Path, db: Database) -> None:

    env = {k: v for k, v in os.environ.items() if not k.startswith("NODES_IMPORT_")}
    env.update(NODES_IMPORT_KAFKA_STARTUP_TIMEOUT_MS="2000",
               NODES_IMPORT_DATABASE_CONNECT_TIMEOUT_MS="2000",
               NODES_IMPORT_ADMIN_ENABLED="false")  # its port may be taken by another daemon

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        # the timeout only keeps a hang from blocking the suite; that the 2 s start-up
        # timeouts were the ones applied is read from the messages
        return subprocess.run([sys.executable, "-m", "nodes_import", "run", *args],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path,
                              env=env, check=False)

    result = run("--dsn", db.dsn, "--bootstrap-servers", "127.0.0.1:9")
    assert result.returncode == 1, result.stderr
    assert "cannot reach Kafka at 127.0.0.1:9 within 2s" in result.stderr
    assert "Traceback" not in result.stderr  # one clear line, no traceback wall
    result = run("--dsn", "postgresql://nobody:secret@127.0.0.1:9/x",
                 "--bootstrap-servers", "127.0.0.1:9")
    assert result.returncode == 1, result.stderr
    assert "cannot connect to PostgreSQL within 2s" in result.stderr
    assert "secret" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.kafka  # it starts its own broker; keeps it out of the PostgreSQL-only CI pass
def test_the_demo_runs_end_to_end_on_embedded_parts_and_leaves_no_process_behind(
        tmp_path: Path) -> None:



    env = {k: v for k, v in os.environ.items() if not k.startswith("NODES_IMPORT_")}
    # A fresh embedded cluster, as on a new clone; outside pytest's 0700 temp tree, which
    # the cluster's system user (when run as root) cannot always enter.
    data = tempfile.mkdtemp(prefix="nodes-import-demo-test-")
    env["XDG_DATA_HOME"] = data
    try:
        result = subprocess.run([sys.executable, "-m", "nodes_import", "demo"],
                                capture_output=True, text=True, timeout=180, cwd=tmp_path,
                                env=env, check=False)
    finally:
        leftovers_in_data = [p.info for p in psutil.process_iter(["pid", "cmdline"])
                             if data in " ".join(p.info["cmdline"] or [])]
        shutil.rmtree(data, ignore_errors=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(": COMPLETED") == 2
    assert "25,000 (expected 25,000)" in result.stdout
    broker = result.stderr.split("using a local Tansu broker on ")[1].split()[0]
    leftovers = [p.info for p in psutil.process_iter(["pid", "cmdline"])
                 if f"tcp://{broker}" in (p.info["cmdline"] or [])]
    assert leftovers == [] and leftovers_in_data == []
