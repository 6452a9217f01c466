"""The import engine end to end against a real PostgreSQL: exact rows, exact counters."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodes_import.cli.sample import reference_id, write_reference_ids, write_users
from nodes_import.config import ImportConfig, RetryConfig
from nodes_import.jobs import ImportJob, new_job_id
from nodes_import.worker import engine
from tests.fixtures.postgres import Database

DOMAIN = "3f1c1a3e-2b9d-4c55-9a57-0d3c6a1f0b21"
FAST_RETRY = RetryConfig(max_attempts=3, initial_interval_ms=10, multiplier=2.0,
                         max_interval_ms=50)


def _cfg(tmp_path: Path, **changes: Any) -> ImportConfig:
    base = ImportConfig(batch_size=1000, max_parallel_futures=2, retry=FAST_RETRY,
                        allowed_roots=(str(tmp_path),))
    return dataclasses.replace(base, **changes)


def _job(source: Path | str | None = None, group: str = "g1", **kw: Any) -> ImportJob:
    return ImportJob(job_id=kw.pop("job_id", new_job_id()), group_id=group, domain_id=DOMAIN,
                     source=None if source is None else str(source), **kw)


def _run(db: Database, job: ImportJob, cfg: ImportConfig, **kw: Any) -> dict[str, Any]:
    outcome = engine.run_import(job, cfg, db.pool, **kw)
    row = db.query("SELECT to_jsonb(j) FROM job_status j WHERE id = %s", (job.job_id,))[0][0]
    assert outcome.status == row["status"]
    return row


def _nodes(db: Database, group: str = "g1") -> dict[str, tuple[str, str, Any]]:
    rows = db.query("SELECT n.reference_id, n.id::text, n.type, m.metadata FROM nodes n"
                    " LEFT JOIN node_metadata m ON m.node_id = n.id WHERE n.group_id = %s",
                    (group,))
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def _assert_counts_add_up(row: dict[str, Any]) -> None:
    assert row["success_count"] + row["failed_count"] == row["total_nodes"]
    assert (row["inserted_count"] + row["updated_count"] + row["unchanged_count"]
            == row["success_count"])
    assert row["rows_committed"] == row["total_nodes"]


def test_a_gzip_csv_is_imported_with_exact_rows_metadata_and_counters(
        db: Database, tmp_path: Path) -> None:
    path = write_users(tmp_path / "users.csv.gz", 5000)
    row = _run(db, _job(path), _cfg(tmp_path))
    assert row["status"] == "COMPLETED"
    assert (row["total_nodes"], row["success_count"], row["failed_count"]) == (5000, 5000, 0)
    assert row["inserted_count"] == 5000
    _assert_counts_add_up(row)
    assert row["started_at"] and row["finished_at"] and row["attempts"] == 1
    assert row["bytes_read"] == row["source_bytes"] == path.stat().st_size
    nodes = _nodes(db)
    assert sorted(nodes) == sorted(reference_id(n) for n in range(5000))
    _, node_type, meta = nodes[reference_id(17)]
    assert node_type == "USER"
    assert meta == {"email": "grace.hopper.17@example.com", "first_name": "Grace",
                    "last_name": "Hopper", "country": "NG", "plan": "pro"}
    assert db.scalar("SELECT count(*) FROM node_metadata") == 5000
    assert db.scalar("SELECT count(DISTINCT domain_id) FROM nodes") == 1


def test_reimporting_the_same_file_changes_nothing_and_writes_no_row_versions(
        db: Database, tmp_path: Path) -> None:
    path = write_users(tmp_path / "users.csv.gz", 3000)
    _run(db, _job(path), _cfg(tmp_path))
    before = db.query("SELECT reference_id, id, xmin::text FROM nodes ORDER BY 1")
    meta_before = db.query("SELECT node_id, xmin::text FROM node_metadata ORDER BY 1")
    row = _run(db, _job(path), _cfg(tmp_path))
    assert row["status"] == "COMPLETED"
    assert (row["unchanged_count"], row["inserted_count"], row["updated_count"]) == (3000, 0, 0)
    assert db.query("SELECT reference_id, id, xmin::text FROM nodes ORDER BY 1") == before
    assert db.query("SELECT node_id, xmin::text FROM node_metadata ORDER BY 1") == meta_before


def test_changed_rows_are_updated_in_place_keeping_their_node_ids(
        db: Database, tmp_path: Path) -> None:
    _run(db, _job(write_users(tmp_path / "a.csv.gz", 2000)), _cfg(tmp_path))
    ids_before = {ref: v[0] for ref, v in _nodes(db).items()}
    changed = write_users(tmp_path / "b.csv.gz", 2000, changed_every=10)
    row = _run(db, _job(changed), _cfg(tmp_path))
    assert (row["updated_count"], row["unchanged_count"], row["inserted_count"]) == (200, 1800, 0)
    nodes = _nodes(db)
    assert {ref: v[0] for ref, v in nodes.items()} == ids_before
    assert sum(1 for v in nodes.values() if v[2]["plan"].endswith("-changed")) == 200


def test_the_last_occurrence_of_a_duplicate_reference_id_wins_across_batches(
        db: Database, tmp_path: Path, gz_csv: Callable[..., Path]) -> None:
    lines = ["reference_id,v"]
    for n in range(3000):
        lines.append(f"k{n % 700},{n}")  # every key repeats, within and across batches
    path = gz_csv("\n".join(lines) + "\n")
    row = _run(db, _job(path), _cfg(tmp_path, batch_size=250, max_parallel_futures=3))
    assert row["status"] == "COMPLETED"
    assert (row["total_nodes"], row["success_count"], row["failed_count"]) == (3000, 3000, 0)
    assert row["inserted_count"] == 700
    _assert_counts_add_up(row)
    nodes = _nodes(db)
    assert len(nodes) == 700
    for k in range(700):
        last = max(n for n in range(3000) if n % 700 == k)
        assert nodes[f"k{k}"][2] == {"v": str(last)}


def test_bad_rows_are_recorded_with_reasons_and_the_job_goes_on(
        db: Database, tmp_path: Path, gz_csv: Callable[..., Path]) -> None:
    content = ("reference_id,type,note\n"
               "good1,,a\n"
               ",,blank\n"
               "toolong" + "x" * 300 + ",,b\n"
               "short\n"
               "nul\x00,,c\n"
               "good2,ADMIN,d\n"
               "x,y,z,extra\n")
    row = _run(db, _job(gz_csv(content)), _cfg(tmp_path))
    assert row["status"] == "COMPLETED"
    assert (row["total_nodes"], row["success_count"], row["failed_count"]) == (7, 2, 5)
    failures = db.query("SELECT row_number, reason, line FROM job_failures ORDER BY 1")
    assert [(f[0], f[1]) for f in failures] == [
        (2, "blank reference_id"),
        (3, "reference_id longer than 255 characters"),
        (4, "expected 3 fields, got 1"),
        (5, "NUL byte in column 'reference_id'"),
        (7, "expected 3 fields, got 4"),
    ]
    assert failures[3][2] == "nul\\0,,c"
    assert failures[4][2] == "x,y,z,extra"
    nodes = _nodes(db)
    assert nodes["good1"][1:] == ("USER", {"note": "a"})
    assert nodes["good2"][1:] == ("ADMIN", {"note": "d"})


def test_a_row_that_is_not_utf8_is_recorded_as_failed_and_the_rest_is_imported(
        db: Database, tmp_path: Path, gz_csv: Callable[..., Path]) -> None:
    content = (b"reference_id,note\n" + b"u1,caf\xc3\xa9\n"  # UTF-8
               + b"u2,caf\xe9\n"  # Latin-1: not UTF-8
               + b"u3,plain\n")
    row = _run(db, _job(gz_csv(content)), _cfg(tmp_path))
    assert row["status"] == "COMPLETED"
    assert (row["total_nodes"], row["success_count"], row["failed_count"]) == (3, 2, 1)
    _assert_counts_add_up(row)
    assert db.query("SELECT row_number, reason, line FROM job_failures") == [
        (2, "invalid UTF-8 in column 'note'", "u2,caf\ufffd")]
    assert {k: v[2] for k, v in _nodes(db).items()} == {"u1": {"note": "café"},
                                                        "u3": {"note": "plain"}}


def test_a_reference_id_file_line_that_is_not_utf8_is_recorded_as_failed(
        db: Database, tmp_path: Path) -> None:
    path = tmp_path / "ids.txt"
    path.write_bytes(b"a1\n\xff\xfeid\na3\n")
    row = _run(db, _job(reference_ids_file=str(path)), _cfg(tmp_path))
    assert row["status"] == "COMPLETED"
    assert (row["total_nodes"], row["success_count"], row["failed_count"]) == (3, 2, 1)
    assert db.scalar("SELECT reason FROM job_failures") == \
        "invalid UTF-8 in column 'reference_id'"
    assert set(_nodes(db)) == {"a1", "a3"}


def _rows_with_blank_ids(good: int, blank: int) -> str:
    """A CSV of ``good`` rows with a reference ID, then ``blank`` rows whose ID is blank
    (each rejected: 'blank reference_id')."""
    return ("reference_id,note\n" + "".join(f"r{n},x\n" for n in range(good))
            + "".join(f" ,b{n}\n" for n in range(blank)))


def test_the_job_fails_once_rejected_rows_pass_the_reject_ratio(
        db: Database, tmp_path: Path, gz_csv: Callable[..., Path]) -> None:
    # 11 of 100 rows rejected: 0.11, over 0.1 (and well under 4x the limit, so a limit
    # checked against a multiple of the setting would let it through)
    row = _run(db, _job(gz_csv(_rows_with_blank_ids(89, 11))),
               _cfg(tmp_path, max_reject_ratio=0.1))
    assert row["status"] == "FAILED"
    assert row["error"] == ("11 of 100 rows rejected, over "
                            "node.import.max-reject-ratio (0.1)")
    # the limit is checked before the batch is written: nothing of it committed
    assert (row["total_nodes"], row["success_count"], row["failed_count"]) == (0, 0, 0)
    assert db.scalar("SELECT count(*) FROM nodes") == 0
    assert db.scalar("SELECT count(*) FROM job_failures") == 0


def test_a_job_with_rejected_rows_at_the_reject_ratio_completes_with_exact_counts(
        db: Database, tmp_path: Path, gz_csv: Callable[..., Path]) -> None:
    # 10 of 100 rows rejected: exactly 0.1 is not over the limit
    row = _run(db, _job(gz_csv(_rows_with_blank_ids(90, 10))),
               _cfg(tmp_path, max_reject_ratio=0.1))
    assert row["status"] == "COMPLETED"
    assert (row["total_nodes"], row["success_count"], row["failed_count"]) == (100, 90, 10)
    _assert_counts_add_up(row)
    assert db.scalar("SELECT count(*) FROM nodes") == 90
    assert db.scalar("SELECT count(*) FROM job_failures") == 10


@pytest.mark.parametrize("make, message", [
    (lambda tmp, gz: tmp / "missing.csv.gz", "no such file"),
    (lambda tmp, gz: Path("/etc/passwd"), "not under an allowed root"),
    (lambda tmp, gz: gz(b"\x1f\x8b\x08\x00garbage-garbage-garbage", compress=False),
     "decompress"),
    (lambda tmp, gz: gz("id,name\n1,a\n"), "no 'reference_id' column"),
])
def test_an_unreadable_file_fails_the_job_before_writing_anything(
        db: Database, tmp_path: Path, gz_csv: Callable[..., Path], make: Callable,
        message: str) -> None:
    row = _run(db, _job(make(tmp_path, gz_csv)), _cfg(tmp_path))
    assert row["status"] == "FAILED"
    assert message in row["error"]
    assert row["total_nodes"] == 0
    assert db.scalar("SELECT count(*) FROM nodes") == 0


def test_files_over_the_size_limits_fail_the_job(db: Database, tmp_path: Path) -> None:
    path = write_users(tmp_path / "u.csv.gz", 2000)
    row = _run(db, _job(path), _cfg(tmp_path, max_file_bytes=1000))
    assert row["status"] == "FAILED" and "max-file-bytes" in row["error"]
    row = _run(db, _job(path), _cfg(tmp_path, max_decompressed_bytes=50_000,
                                     block_size_bytes=16_384))
    assert row["status"] == "FAILED" and "max-decompressed-bytes" in row["error"]


def test_a_reference_id_list_becomes_nodes_without_metadata(db: Database, tmp_path: Path) -> None:
    ids = (*tuple(f"ref-{n}" for n in range(2500)), "ref-1", "", "ref-2")
    row = _run(db, _job(reference_ids=ids, node_type="SERVICE"), _cfg(tmp_path))
    assert row["status"] == "COMPLETED"
    assert row["source"] == "reference-ids"
    assert (row["total_nodes"], row["success_count"], row["failed_count"]) == (2503, 2502, 1)
    assert row["inserted_count"] == 2500
    nodes = _nodes(db)
    assert len(nodes) == 2500 and {v[1] for v in nodes.values()} == {"SERVICE"}
    assert db.scalar("SELECT count(*) FROM node_metadata") == 0


def test_a_reference_id_file_keeps_the_metadata_a_file_import_gave(
        db: Database, tmp_path: Path) -> None:
    _run(db, _job(write_users(tmp_path / "u.csv.gz", 100)), _cfg(tmp_path))
    ids = write_reference_ids(tmp_path / "ids.txt.gz", 150)
    row = _run(db, _job(reference_ids_file=str(ids)), _cfg(tmp_path, batch_size=40))
    assert (row["inserted_count"], row["unchanged_count"]) == (50, 100)
    assert db.scalar("SELECT count(*) FROM node_metadata") == 100


def test_a_terminated_backend_mid_job_is_retried_to_exact_counts(
        db: Database, tmp_path: Path) -> None:
    path = write_users(tmp_path / "u.csv.gz", 20_000)
    killed = threading.Event()

    def kill_once(progress: engine.Progress) -> None:
        if not killed.is_set():
            killed.set()
            with psycopg.connect(db.dsn, autocommit=True) as conn:
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                             " WHERE application_name = 'nodes-import' AND pid <> pg_backend_pid()")

    row = _run(db, _job(path), _cfg(tmp_path, batch_size=500), on_progress=kill_once)
    assert killed.is_set()
    assert row["status"] == "COMPLETED"
    assert (row["total_nodes"], row["success_count"], row["inserted_count"]) == (20_000,) * 3
    assert db.scalar("SELECT count(*) FROM nodes") == 20_000
    assert db.scalar("SELECT count(*) FROM node_metadata") == 20_000


def test_a_global_timeout_that_runs_out_mid_job_cancels_the_waiting_batch_and_keeps_the_rest(
        db: Database, tmp_path: Path) -> None:
    """The timeout runs out while batch 2 waits on a lock: its statement must be cancelled
    when the job's time is up (statement_timeout capped by the time left), not when the
    batch timeout is; batch 1 stays committed and the counters say so."""
    path = write_users(tmp_path / "u.csv.gz", 2000)
    timeout_ms = 6000  # room for batch 1 to commit on a loaded machine
    locked, ended = threading.Event(), threading.Event()
    holder: list[psycopg.Connection[Any]] = []

    def lock_nodes_after_the_first_batch(progress: engine.Progress) -> None:
        if not locked.is_set():
            conn = psycopg.connect(db.dsn)
            conn.execute("LOCK TABLE nodes IN ACCESS EXCLUSIVE MODE")
            holder.append(conn)
            locked.set()

    def release_when_the_job_ended() -> None:
        # the job ends by itself with the lock still held, unless its batch waits out the
        # 120 s batch timeout instead of its time left: then the lock goes well after the
        # deadline, batch 2 commits, and the counts below show it
        locked.wait(timeout_ms / 1000.0)
        ended.wait(timeout_ms / 1000.0 + 10)
        for conn in holder:
            conn.rollback()
            conn.close()

    releaser = threading.Thread(target=release_when_the_job_ended)
    releaser.start()
    try:
        row = _run(db, _job(path), _cfg(tmp_path, batch_size=500, max_parallel_futures=1,
                                        global_timeout_ms=timeout_ms, batch_timeout_ms=120_000),
                   on_progress=lock_nodes_after_the_first_batch)
    finally:
        ended.set()
        releaser.join()
    assert locked.is_set()
    assert row["status"] == "FAILED"
    assert row["error"] == "Timeout exceeded"
    assert (row["total_nodes"], row["success_count"], row["inserted_count"]) == (500,) * 3
    _assert_counts_add_up(row)
    assert db.scalar("SELECT count(*) FROM nodes") == 500
    assert db.scalar("SELECT count(*) FROM node_metadata") == 500


def test_a_job_past_its_global_timeout_fails_with_timeout_exceeded(
        db: Database, tmp_path: Path) -> None:
    path = write_users(tmp_path / "u.csv.gz", 5000)
    row = _run(db, _job(path), _cfg(tmp_path, global_timeout_ms=1, batch_size=100))
    assert row["status"] == "FAILED"
    assert row["error"] == "Timeout exceeded"
    _assert_counts_add_up(row)


def test_an_interrupted_job_resumes_from_its_checkpoint_without_double_counting(
        db: Database, tmp_path: Path) -> None:
    path = write_users(tmp_path / "u.csv.gz", 10_000, duplicate_every=7, bad_every=13)
    cancel = threading.Event()

    def stop_early(progress: engine.Progress) -> None:
        if progress.rows_committed >= 2000:
            cancel.set()

    job = _job(path)
    cfg = _cfg(tmp_path, batch_size=500, max_parallel_futures=3)
    first = _run(db, job, cfg, on_progress=stop_early, cancel=cancel)
    assert first["status"] == "PROCESSING"
    assert 2000 <= first["rows_committed"] < 10_000
    second = _run(db, job, cfg)
    assert second["status"] == "COMPLETED" and second["attempts"] == 2
    assert second["total_nodes"] == 10_000
    _assert_counts_add_up(second)
    # the same file imported in one go gives the same outcome
    other = _run(db, _job(path, group="g2"), cfg)
    for key in ("total_nodes", "success_count", "failed_count", "inserted_count"):
        assert second[key] == other[key], key
    assert db.scalar("SELECT count(*) FROM job_failures WHERE job_id = %s", (job.job_id,)) \
        == other["failed_count"]
    def strip(nodes):
        return {k: (v[1], v[2]) for k, v in nodes.items()}
    assert strip(_nodes(db, "g1")) == strip(_nodes(db, "g2"))


def test_a_finished_job_is_not_run_again(db: Database, tmp_path: Path) -> None:
    job = _job(write_users(tmp_path / "u.csv.gz", 100))
    first = _run(db, job, _cfg(tmp_path))
    second = _run(db, job, _cfg(tmp_path))
    assert second["attempts"] == first["attempts"] == 1
    assert second["total_nodes"] == 100


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(values=st.lists(st.text(st.characters(blacklist_categories=("Cs",),
                                             blacklist_characters="\x00"), min_size=1),
                       min_size=1, max_size=8))
def test_any_metadata_value_survives_file_to_jsonb_exactly(
        db: Database, tmp_path: Path, values: list[str]) -> None:
    group = "h-" + uuid.uuid4().hex[:8]
    quoted = ['"' + v.replace('"', '""') + '"' for v in values]
    content = "reference_id,value\n" + "".join(f"r{i},{q}\n" for i, q in enumerate(quoted))
    path = tmp_path / f"{group}.csv"
    path.write_bytes(content.encode())
    row = _run(db, _job(path, group=group), _cfg(tmp_path))
    assert row["status"] == "COMPLETED", row["error"]
    nodes = _nodes(db, group)
    assert {k: v[2] for k, v in nodes.items()} == {f"r{i}": {"value": v}
                                                   for i, v in enumerate(values)}
    assert orjson.loads(orjson.dumps(values)) == values


def test_row_column_and_field_limits_are_enforced(db: Database, tmp_path: Path,
                                                  gz_csv: Callable[..., Path]) -> None:
    wide = gz_csv("reference_id," + ",".join(f"c{n}" for n in range(20)) + "\nr1" + "," * 20 + "\n")
    row = _run(db, _job(wide), _cfg(tmp_path, max_columns=10))
    assert row["status"] == "FAILED" and "max-columns" in row["error"]
    big = gz_csv("reference_id,blob\nr1,small\nr2," + "x" * 2000 + "\nr3,ok\n")
    row = _run(db, _job(big, group="g-big"), _cfg(tmp_path, max_field_bytes=1000))
    assert (row["status"], row["success_count"], row["failed_count"]) == ("COMPLETED", 2, 1)
    assert db.scalar("SELECT reason FROM job_failures WHERE job_id = %s", (row["id"],)) \
        == "value in column 'blob' longer than 1000 bytes"
    many = write_users(tmp_path / "many.csv.gz", 3000)
    row = _run(db, _job(many, group="g-many"), _cfg(tmp_path, max_rows=2500, batch_size=500))
    assert row["status"] == "FAILED" and "max-rows" in row["error"]
    assert row["total_nodes"] <= 2500
