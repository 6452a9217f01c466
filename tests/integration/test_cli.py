"""The one-shot CLI as users run it: a real process, a real database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

from nodes_import.cli.sample import write_users
from tests.fixtures.postgres import Database

DOMAIN = "3f1c1a3e-2b9d-4c55-9a57-0d3c6a1f0b21"


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("NODES_IMPORT_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "nodes_import", *args], check=False, cwd=cwd,
                          env=full_env,
                          capture_output=True, text=True, timeout=120)


def test_db_init_is_idempotent(db: Database, tmp_path: Path) -> None:
    first = _cli("db", "init", "--dsn", db.dsn, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "schema is up to date"  # the fixture migrated it already
    assert db.scalar("SELECT count(*) FROM schema_migrations") >= 1


def test_import_json_prints_the_final_job_row_and_exits_0(db: Database, tmp_path: Path) -> None:
    write_users(tmp_path / "u.csv.gz", 1500)
    result = _cli("import", "u.csv.gz", "--group", "cli", "--domain", DOMAIN, "--json",
                  cwd=tmp_path, env={"NODES_IMPORT_DSN": db.dsn})
    assert result.returncode == 0, result.stderr
    row = orjson.loads(result.stdout)
    assert row["status"] == "COMPLETED"
    assert (row["total_nodes"], row["success_count"], row["failed_count"]) == (1500, 1500, 0)
    assert row["id"] == db.scalar("SELECT id::text FROM job_status")
    for column in ("id", "status", "total_nodes", "success_count", "failed_count", "error",
                   "inserted_count", "updated_count", "unchanged_count", "source"):
        assert column in row


def test_a_failed_import_exits_1_with_the_reason(db: Database, tmp_path: Path) -> None:
    result = _cli("import", "/etc/passwd", "--group", "cli", "--domain", DOMAIN,
                  "--dsn", db.dsn, cwd=tmp_path)
    assert result.returncode == 1
    assert "FAILED" in result.stdout and "not under an allowed root" in result.stdout


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert _cli("import", "--group", "g", "--domain", DOMAIN, cwd=tmp_path).returncode == 2
    assert _cli("import", "f.csv", "--group", "g", "--domain", "not-a-uuid",
                cwd=tmp_path).returncode == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("node: {import: {batch: {size: many}}}\n")
    result = _cli("--config", str(bad), "jobs", "list", cwd=tmp_path)
    assert result.returncode == 2 and "node.import.batch.size" in result.stderr


def test_jobs_list_and_show_report_jobs_and_their_rejected_rows(
        db: Database, tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text("reference_id,a\nok,1\n,2\n")
    env = {"NODES_IMPORT_DSN": db.dsn}
    imported = _cli("import", "bad.csv", "--group", "cli", "--domain", DOMAIN, "--json",
                    cwd=tmp_path, env=env)
    job_id = orjson.loads(imported.stdout)["id"]
    listed = _cli("jobs", "list", "--json", cwd=tmp_path, env=env)
    assert [j["id"] for j in orjson.loads(listed.stdout)] == [job_id]
    shown = _cli("jobs", "show", job_id, "--json", cwd=tmp_path, env=env)
    detail = orjson.loads(shown.stdout)
    assert detail["failed_count"] == 1
    assert detail["failures"] == [{"row_number": 2, "reference_id": None,
                                   "reason": "blank reference_id", "line": ",2"}]
    text = _cli("jobs", "show", job_id, cwd=tmp_path, env=env)
    assert "row 2: blank reference_id" in text.stdout


def test_the_dsn_password_never_reaches_the_output(tmp_path: Path) -> None:
    dsn = "postgresql://app:s3cr3t-pw@127.0.0.1:1/nodes?connect_timeout=1"
    result = _cli("jobs", "list", cwd=tmp_path,
                  env={"NODES_IMPORT_DSN": dsn, "NODES_IMPORT_DATABASE_CONNECT_TIMEOUT_MS": "1500"})
    assert result.returncode == 1
    assert "s3cr3t-pw" not in result.stdout + result.stderr
    assert "PostgreSQL" in result.stderr


def test_a_failed_job_is_resumed_only_when_asked(db: Database, tmp_path: Path) -> None:
    env = {"NODES_IMPORT_DSN": db.dsn}
    job_id = "8a3c7e0e-5a43-4e0b-9d55-2f2b7d1c9e01"
    failed = _cli("import", "users.csv.gz", "--group", "cli", "--domain", DOMAIN, "--job-id",
                  job_id, "--json", cwd=tmp_path, env=env)
    assert failed.returncode == 1 and orjson.loads(failed.stdout)["status"] == "FAILED"
    write_users(tmp_path / "users.csv.gz", 500)  # the operator fixes the problem
    again = _cli("import", "users.csv.gz", "--group", "cli", "--domain", DOMAIN, "--job-id",
                 job_id, "--json", cwd=tmp_path, env=env)
    assert again.returncode == 1 and orjson.loads(again.stdout)["total_nodes"] == 0
    retried = _cli("import", "users.csv.gz", "--group", "cli", "--domain", DOMAIN, "--job-id",
                   job_id, "--retry-failed", "--json", cwd=tmp_path, env=env)
    assert retried.returncode == 0, retried.stderr
    row = orjson.loads(retried.stdout)
    assert (row["status"], row["total_nodes"], row["attempts"], row["error"]) == \
        ("COMPLETED", 500, 2, None)
    assert _cli("import", "users.csv.gz", "--group", "g", "--domain", DOMAIN, "--retry-failed",
                cwd=tmp_path, env=env).returncode == 2


def test_submit_refuses_a_reference_id_list_over_the_message_limit_before_any_broker(
        tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"ref-{n:08d}\n" for n in range(2_000)))  # ~30 kB as JSON
    result = _cli("submit", "--reference-ids", str(ids), "--group", "g", "--domain", DOMAIN,
                  "--bootstrap-servers", "127.0.0.1:9", cwd=tmp_path,
                  env={"NODES_IMPORT_KAFKA_MAX_MESSAGE_BYTES": "16384"})
    assert result.returncode == 2, result.stderr
    assert "(2000 reference IDs), over kafka.max-message-bytes (16,384)" in result.stderr
    assert "split the list" in result.stderr
