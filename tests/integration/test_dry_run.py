"""``import --dry-run``: the whole file through the import's pipeline, nothing written, no
database; its counts are the ones the import then makes."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import pytest

from nodes_import.cli.sample import write_users
from nodes_import.config import ImportConfig
from nodes_import.jobs import ImportJob
from nodes_import.worker import dryrun
from tests.fixtures.postgres import Database

DOMAIN = "3f1c1a3e-2b9d-4c55-9a57-0d3c6a1f0b21"
NOWHERE = "postgresql://nobody:pw@127.0.0.1:1/none?connect_timeout=1"


def _cli(*args: str, cwd: Path,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("NODES_IMPORT_")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "nodes_import", *args], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=300, check=False)


def test_the_dry_run_counts_what_the_import_then_counts_and_writes_nothing(
        db: Database, tmp_path: Path) -> None:
    write_users(tmp_path / "u.csv.gz", 30_000, bad_every=700, duplicate_every=300)
    dry = _cli("import", "u.csv.gz", "--dry-run", "--json", cwd=tmp_path,
               env={"NODES_IMPORT_DSN": NOWHERE})  # no database is ever touched
    assert dry.returncode == 0, dry.stderr
    seen = orjson.loads(dry.stdout)
    assert seen["would_complete"] is True and seen["error"] is None
    real = _cli("import", "u.csv.gz", "--group", "dry", "--domain", DOMAIN, "--json",
                cwd=tmp_path, env={"NODES_IMPORT_DSN": db.dsn})
    row = orjson.loads(real.stdout)
    assert row["status"] == "COMPLETED"
    assert (seen["rows"], seen["rejected"], seen["valid"]) == (
        row["total_nodes"], row["failed_count"], row["success_count"])
    # A fresh database: each distinct key inserted once, each repeat applied as an update.
    assert (seen["distinct_keys"], seen["duplicate_keys"]) == (
        row["inserted_count"], row["updated_count"])
    assert seen["duplicate_keys"] > 0 and seen["rejected"] > 0
    assert seen["rejected_by_reason"] == {"blank reference_id": row["failed_count"]}
    failures = db.query("SELECT row_number, reason, line FROM job_failures ORDER BY row_number"
                        " LIMIT 20")
    assert [(r["row_number"], r["reason"], r["line"]) for r in seen["first_rejected"]] == \
        [tuple(f) for f in failures]


def test_every_reason_is_counted_and_the_text_report_says_it(tmp_path: Path) -> None:
    long_ref = "r" * 300
    lines = [b"reference_id,type,a", b"ok1,USER,1", b"ok1,USER,2", b",USER,3",
             b"wide,USER,4,5", long_ref.encode() + b",USER,6", b"nul,USER,x\x00y",
             b"latin,USER,caf\xe9", b"ok2,USER,7"]
    (tmp_path / "mixed.csv").write_bytes(b"\n".join(lines) + b"\n")
    result = _cli("import", "mixed.csv", "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith("dry run of mixed.csv: would complete (nothing written)")
    assert "rows 8: 3 would be imported, 5 rejected" in text
    assert "keys 2 distinct; 1 rows repeat a key seen before" in text
    for reason in ("blank reference_id", "expected 3 fields, got 4",
                   "reference_id longer than 255 characters", "NUL byte in column 'a'",
                   "invalid UTF-8 in column 'a'"):
        assert f"1  {reason}" in text, reason
    assert "row 4: expected 3 fields, got 4: 'wide,USER,4,5'" in text


def test_a_file_the_import_would_fail_exits_1_with_the_reason(tmp_path: Path) -> None:
    missing = _cli("import", "nope.csv.gz", "--dry-run", cwd=tmp_path)
    assert missing.returncode == 1 and "would FAIL: no such file" in missing.stdout
    refused = _cli("import", "/etc/passwd", "--dry-run", "--json", cwd=tmp_path)
    assert refused.returncode == 1
    assert orjson.loads(refused.stdout)["error_type"] == "nodes_import.errors.SourceRefusedError"
    (tmp_path / "bad.csv").write_text("reference_id,a\n,1\n,2\nok,3\n")
    ratio = _cli("import", "bad.csv", "--dry-run", cwd=tmp_path,
                 env={"NODES_IMPORT_NODE_IMPORT_MAX_REJECT_RATIO": "0.5"})
    assert ratio.returncode == 1 and "over node.import.max-reject-ratio (0.5)" in ratio.stdout
    with gzip.open(tmp_path / "ids.txt.gz", "wt") as out:
        out.write("".join(f"id-{n}\n" for n in range(50)))
    ids = _cli("import", "--reference-ids", "ids.txt.gz", "--dry-run", cwd=tmp_path,
               env={"NODES_IMPORT_NODE_IMPORT_MAX_REFERENCE_IDS": "10"})
    assert ids.returncode == 1 and "node.import.max-reference-ids (10)" in ids.stdout


def test_group_and_domain_are_needed_only_to_import(tmp_path: Path) -> None:
    (tmp_path / "f.csv").write_text("reference_id\na\n")
    assert _cli("import", "f.csv", "--dry-run", cwd=tmp_path).returncode == 0
    missing = _cli("import", "f.csv", cwd=tmp_path)
    assert missing.returncode == 2 and "Missing option '--group'" in missing.stderr
    missing = _cli("import", "f.csv", "--group", "g", cwd=tmp_path)
    assert missing.returncode == 2 and "Missing option '--domain'" in missing.stderr


def test_distinct_keys_stay_exact_when_the_buckets_are_compacted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dryrun, "COMPACT_EVERY", 1000)  # compact every few batches
    path = write_users(tmp_path / "u.csv.gz", 20_000, duplicate_every=7)
    job = ImportJob(job_id=str(uuid.uuid4()), group_id="g", domain_id=DOMAIN, source=str(path))
    cfg = ImportConfig(batch_size=500, allowed_roots=(str(tmp_path),))
    report = dryrun.dry_run(job, cfg)
    with gzip.open(path, "rt") as handle:
        keys = [line.split(",", 1)[0] for line in handle][1:]
    assert (report.rows, report.distinct_keys) == (20_000, len(set(keys)))
    assert report.duplicate_keys == len(keys) - len(set(keys)) > 2000
