"""Files in object storage and over HTTP through the CLI, as users run it: ``import`` of an
``s3://`` or ``http://`` source or ID list, and ``submit --upload``."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import orjson

from nodes_import.cli.sample import write_reference_ids, write_users
from tests.fixtures.fileserver import FileServer
from tests.fixtures.kafka import KafkaTest
from tests.fixtures.postgres import Database
from tests.fixtures.s3 import Bucket, S3Server

DOMAIN = "3f1c1a3e-2b9d-4c55-9a57-0d3c6a1f0b21"


def _cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("NODES_IMPORT_")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-m", "nodes_import", *args], check=False, cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=120)


def _s3_env(s3_server: S3Server, *allowed: str) -> dict[str, str]:
    """How an operator points nodes-import at the store: the endpoint and the allow-list
    in the environment, the credentials from the AWS chain (``s3_env``)."""
    return {"NODES_IMPORT_NODE_IMPORT_S3_ENDPOINT_OVERRIDE": s3_server.endpoint,
            "NODES_IMPORT_NODE_IMPORT_ALLOWED_URIS": "[" + ", ".join(allowed) + "]"}


def test_import_of_a_gzipped_csv_in_s3_counts_exactly(
        db: Database, bucket: Bucket, s3_server: S3Server, tmp_path: Path) -> None:
    users = write_users(tmp_path / "users.csv.gz", 3000)
    uri = bucket.put("exports/users.csv.gz", users)
    result = _cli("import", uri, "--group", "s3", "--domain", DOMAIN, "--json", "--dsn", db.dsn,
                  cwd=tmp_path, env=_s3_env(s3_server, f"s3://{bucket.name}/exports/"))
    assert result.returncode == 0, result.stdout + result.stderr
    row = orjson.loads(result.stdout)
    assert (row["status"], row["total_nodes"], row["success_count"], row["failed_count"]) == \
        ("COMPLETED", 3000, 3000, 0)
    assert row["source"] == uri
    assert db.scalar("SELECT count(*) FROM nodes WHERE group_id = 's3'") == 3000


def test_import_of_reference_ids_from_an_http_url(
        db: Database, file_server: FileServer, tmp_path: Path) -> None:
    ids = write_reference_ids(tmp_path / "ids.txt.gz", 4000)
    url = file_server.put("lists/ids.txt.gz", ids.read_bytes())
    env = {"NODES_IMPORT_NODE_IMPORT_ALLOWED_URIS": f"[{file_server.url('lists/')}]"}
    result = _cli("import", "--reference-ids", url + "?X-Amz-Signature=f00d", "--group", "web",
                  "--domain", DOMAIN, "--json", "--dsn", db.dsn, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    row = orjson.loads(result.stdout)
    assert (row["status"], row["total_nodes"], row["inserted_count"]) == ("COMPLETED", 4000, 4000)
    assert db.scalar("SELECT count(*) FROM nodes WHERE group_id = 'web'") == 4000


def test_import_of_a_uri_outside_the_allow_list_fails_without_a_request(
        db: Database, file_server: FileServer, tmp_path: Path) -> None:
    url = file_server.put("private/u.csv", b"reference_id\nx\n") + "?X-Amz-Signature=f00d"
    result = _cli("import", url, "--group", "web", "--domain", DOMAIN, "--json", "--dsn", db.dsn,
                  cwd=tmp_path, env={})
    assert result.returncode == 1
    row = orjson.loads(result.stdout)
    assert row["status"] == "FAILED" and "no remote source is allowed" in row["error"]
    assert "f00d" not in result.stdout + result.stderr  # the signature is never shown
    assert file_server.requests == []


def test_submit_upload_sends_the_uploaded_objects_uri(
        kafka: KafkaTest, bucket: Bucket, s3_server: S3Server, tmp_path: Path) -> None:
    kafka.create_topic()
    users = write_users(tmp_path / "users.csv.gz", 500)
    prefix = f"s3://{bucket.name}/incoming/"
    result = _cli("submit", str(users), "--upload", prefix, "--group", "g", "--domain", DOMAIN,
                  "--bootstrap-servers", kafka.bootstrap, "--topic", kafka.topic,
                  cwd=tmp_path, env=_s3_env(s3_server, prefix))
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    message = orjson.loads(kafka.read(kafka.topic, 1)[0].value or b"")
    assert message["file"] == f"{prefix}{job_id}/users.csv.gz"
    assert bucket.get(f"incoming/{job_id}/users.csv.gz") == users.read_bytes()
    assert "referenceIds" not in message and "warning" not in result.stderr


def test_submit_sends_a_list_too_large_for_a_message_as_an_uploaded_id_file(
        kafka: KafkaTest, bucket: Bucket, s3_server: S3Server, tmp_path: Path) -> None:
    kafka.create_topic()
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"ref-{n:08d}\n" for n in range(2_000)))  # ~30 kB as JSON
    small = tmp_path / "few.txt"
    small.write_text("a\nb\n")
    env = {**_s3_env(s3_server, "s3://elsewhere/"), "NODES_IMPORT_KAFKA_MAX_MESSAGE_BYTES": "16384"}
    common = ["--upload", f"s3://{bucket.name}/ids", "--group", "g", "--domain", DOMAIN,
              "--bootstrap-servers", kafka.bootstrap, "--topic", kafka.topic]
    big = _cli("submit", "--reference-ids", str(ids), *common, cwd=tmp_path, env=env)
    assert big.returncode == 0, big.stderr
    assert "daemons with this configuration would refuse it" in big.stderr  # allow-list
    inline = _cli("submit", "--reference-ids", str(small), *common, cwd=tmp_path, env=env)
    given = _cli("submit", "--reference-ids", "s3://b/k.txt.gz", *common, cwd=tmp_path, env=env)
    assert inline.returncode == 0 and given.returncode == 0, inline.stderr + given.stderr
    first, second, third = (orjson.loads(d.value or b"") for d in kafka.read(kafka.topic, 3))
    job_id = big.stdout.strip()
    assert first["referenceIdsFile"] == f"s3://{bucket.name}/ids/{job_id}/ids.txt"
    assert "referenceIds" not in first
    assert bucket.get(f"ids/{job_id}/ids.txt") == ids.read_bytes()
    assert second["referenceIds"] == ["a", "b"] and "referenceIdsFile" not in second
    assert third["referenceIdsFile"] == "s3://b/k.txt.gz"


def test_the_uploaded_id_file_is_read_back_gzipped_or_not(
        db: Database, bucket: Bucket, s3_server: S3Server, tmp_path: Path) -> None:
    ids = write_reference_ids(tmp_path / "ids.txt.gz", 1200)
    uri = bucket.put("ids/ids.txt.gz", ids)
    result = _cli("import", "--reference-ids", uri, "--group", "ids", "--domain", DOMAIN,
                  "--json", "--dsn", db.dsn, cwd=tmp_path,
                  env=_s3_env(s3_server, f"s3://{bucket.name}/"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert orjson.loads(result.stdout)["total_nodes"] == 1200
    assert len(gzip.decompress(ids.read_bytes()).split()) == 1200
