"""``submit --wait``: the job sent through a real broker to a real daemon, followed until it
ends, with import's progress line and exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from nodes_import.cli.sample import write_users
from tests.fixtures.daemon import Daemons
from tests.fixtures.kafka import KafkaTest
from tests.fixtures.postgres import Database

DOMAIN = "3f1c1a3e-2b9d-4c55-9a57-0d3c6a1f0b21"


def _submit(kafka: KafkaTest, db: Database, cwd: Path, *args: str,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NODES_IMPORT_")}
    return subprocess.run(
        [sys.executable, "-m", "nodes_import", "submit", *args, "--group", "wait",
         "--domain", DOMAIN, "--topic", kafka.topic, "--bootstrap-server", kafka.bootstrap,
         "--dsn", db.dsn, "--wait"], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout, check=False)


@pytest.mark.slow
def test_submit_wait_follows_the_job_with_progress_lines_and_exits_0_when_it_completes(
        daemons: Daemons, kafka: KafkaTest, db: Database, tmp_path: Path) -> None:
    kafka.create_topic()
    daemons.start(node={"import": {"batch": {"size": 500}}})
    users = write_users(tmp_path / "u.csv.gz", 100_000)
    result = _submit(kafka, db, tmp_path, str(users), "--progress-interval", "0.5",
                     "--timeout", "100")
    assert result.returncode == 0, result.stdout + result.stderr
    job_id, *summary = result.stdout.splitlines()
    assert summary[0] == f"job {job_id}: COMPLETED"
    assert "rows 100,000: 100,000 imported" in result.stdout
    progress = [line for line in result.stderr.splitlines() if line.startswith(f"job {job_id}:")]
    assert progress, result.stderr  # import's line: job <id>: <s>s  <rows> rows  <rate> rows/s
    assert all("rows/s" in line and "% read" in line for line in progress)


def test_submit_wait_exits_1_for_a_failed_job_and_prints_its_row_as_json(
        daemons: Daemons, kafka: KafkaTest, db: Database, tmp_path: Path) -> None:
    kafka.create_topic()
    daemons.start()
    result = _submit(kafka, db, tmp_path, str(tmp_path / "missing.csv.gz"), "--json",
                     "--timeout", "60")
    assert result.returncode == 1, result.stdout + result.stderr
    job_id, final = result.stdout.splitlines()
    row = orjson.loads(final)
    assert (row["id"], row["status"]) == (job_id, "FAILED")
    assert "no such file" in row["error"]


def test_submit_wait_gives_up_at_its_timeout_while_no_daemon_takes_the_job(
        kafka: KafkaTest, db: Database, tmp_path: Path) -> None:
    kafka.create_topic()
    result = _submit(kafka, db, tmp_path, "--reference-ids", str(_ids(tmp_path)),
                     "--timeout", "2")
    assert result.returncode == 1
    job_id = result.stdout.splitlines()[0]
    assert f"job {job_id} has not ended after 2s; it goes on" in result.stderr


def _ids(tmp_path: Path) -> Path:
    path = tmp_path / "ids.txt"
    path.write_text("a\nb\n")
    return path
