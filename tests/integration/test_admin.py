"""The admin HTTP API on a real socket and a real database: every route and its errors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from psycopg_pool import ConnectionPool

from nodes_import.config import ImportConfig, OperationsConfig, RetryConfig
from nodes_import.daemon.admin import AdminApp, AdminServer, Operations
from nodes_import.errors import NodesImportError
from nodes_import.jobs import ImportJob
from nodes_import.worker import engine
from tests.fixtures.faultproxy import FaultProxy, through
from tests.fixtures.http import request, samples
from tests.fixtures.kafka import wait_until
from tests.fixtures.postgres import Database

DOMAIN = "3f1c1a3e-2b9d-4c55-9a57-0d3c6a1f0b21"


@pytest.fixture()
def admin(db: Database) -> Iterator[tuple[AdminApp, int]]:
    """The admin API on a free port, on the test's database."""
    app = AdminApp(pool=db.pool)
    server = AdminServer(app, "127.0.0.1", 0)
    port = server.start()
    try:
        yield app, port
    finally:
        server.close()


@pytest.fixture()
def imported(db: Database, gz_csv: Callable[..., Path], tmp_path: Path) -> str:
    """A COMPLETED job with 3 rejected rows (blank reference_id)."""
    lines = ["reference_id,plan"] + [f"r{n},free" for n in range(30)] + [",x"] * 3
    path = gz_csv("\n".join(lines) + "\n")
    job = ImportJob(job_id=str(uuid.uuid4()), group_id="adm", domain_id=DOMAIN,
                    source=str(path))
    cfg = ImportConfig(batch_size=1000, allowed_roots=(str(tmp_path),),
                       retry=RetryConfig(max_attempts=2, initial_interval_ms=10))
    assert engine.run_import(job, cfg, db.pool).status == "COMPLETED"
    return job.job_id


def test_healthz_answers_200_and_head_has_no_body(admin: tuple[AdminApp, int]) -> None:
    _, port = admin
    answer = request(port, "/healthz")
    assert (answer.status, answer.json()) == (200, {"status": "ok"})
    head = request(port, "/healthz", method="HEAD")
    assert (head.status, head.body) == (200, b"")


def test_readyz_is_200_when_the_database_answers_and_the_hook_says_ready(
        admin: tuple[AdminApp, int]) -> None:
    app, port = admin
    assert request(port, "/readyz").json() == {"status": "ready"}
    app.readiness = lambda: "starting: not subscribed to Kafka yet"
    answer = request(port, "/readyz")
    assert answer.status == 503
    assert answer.json()["reasons"] == ["starting: not subscribed to Kafka yet"]


def test_readyz_is_503_without_a_database_and_never_shows_the_password() -> None:
    dsn = "postgresql://ops:s3cret-pw@127.0.0.1:1/nodes?connect_timeout=1"
    pool = ConnectionPool(dsn, min_size=1, open=False)
    pool.open(wait=False)
    app = AdminApp(pool=pool, db_timeout_s=0.3)
    server = AdminServer(app, "127.0.0.1", 0)
    port = server.start()
    try:
        answer = request(port, "/readyz")
        assert answer.status == 503
        assert answer.json()["reasons"][0].startswith("database: ")
        jobs = request(port, "/jobs")
        assert jobs.status == 503 and "database unavailable" in jobs.json()["error"]
        assert b"s3cret" not in answer.body + jobs.body
        app.pool = None
        assert request(port, "/readyz").json()["reasons"] == [
            "database: database not connected yet"]
    finally:
        server.close()
        pool.close()


def test_after_a_long_outage_the_reopened_admin_pool_answers_readyz_at_once(
        db: Database, pg_proxy: FaultProxy) -> None:
    """psycopg_pool waits 1, 2, 4, 8 s... between reconnect attempts: after an outage the
    admin pool could keep /readyz failing for about as long as the outage lasted. The
    daemon reopens it when the database answers again (``Operations.reopen``, called with
    ``MainDatabase.reopen``)."""
    ops = Operations(OperationsConfig(admin_enabled=False), owner="test:1",
                     readiness=lambda: None, scrape=lambda snap: None)
    ops.attach(through(pg_proxy, db.dsn), connect_timeout_s=1.0)
    try:
        assert ops.app.not_ready() == []
        pg_proxy.refuse_for(3600)
        pool = ops.pool
        assert pool is not None

        def backed_off() -> bool:  # 4 failed attempts: the next one is ~8 s away
            ops.app.not_ready()
            return pool.get_stats().get("connections_errors", 0) >= 4

        wait_until(backed_off, 30, "the admin pool backing off")
        pg_proxy.heal()
        # The database answers, but the old pool would usually wait out its backoff first
        # (not asserted: on a loaded machine its next attempt may fall right now; CI once).
        ops.reopen()
        assert ops.pool is not pool and ops.app.pool is ops.pool
        assert ops.housekeeper is not None and ops.housekeeper.pool is ops.pool
        assert ops.app.not_ready() == []
    finally:
        ops.close()


def test_metrics_serves_the_prometheus_text_format(admin: tuple[AdminApp, int],
                                                   imported: str) -> None:
    _, port = admin
    answer = request(port, "/metrics")
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("text/plain; version=")
    scrape = samples(answer.body.decode())
    assert any(name == "node_import_success_total" for name, _ in scrape)


def test_jobs_lists_recent_jobs_with_their_progress(admin: tuple[AdminApp, int],
                                                    imported: str) -> None:
    _, port = admin
    listed = request(port, "/jobs").json()
    assert [j["id"] for j in listed] == [imported]
    assert listed[0]["progress_percentage"] == 100.0
    assert request(port, "/jobs?status=FAILED").json() == []
    assert len(request(port, "/jobs?status=completed&limit=1").json()) == 1


def test_a_job_shows_its_counts_progress_and_first_rejected_rows(
        admin: tuple[AdminApp, int], imported: str) -> None:
    _, port = admin
    job = request(port, f"/jobs/{imported}").json()
    assert (job["status"], job["success_count"], job["failed_count"]) == ("COMPLETED", 30, 3)
    assert job["progress_percentage"] == 100.0
    assert [f["row_number"] for f in job["failures"]] == [31, 32, 33]
    assert job["failures"][0]["reason"]


@pytest.mark.parametrize("path, code, message", [
    ("/jobs/not-a-uuid", 400, "not a job id"),
    (f"/jobs/{uuid.UUID(int=7)}", 404, "no job"),
    ("/jobs?status=RUNNING", 400, "status must be one of"),
    ("/jobs?limit=abc", 400, "limit must be an integer"),
    ("/jobs?limit=0", 400, "limit must be within 1..1000"),
    ("/jobs?limit=5000", 400, "limit must be within"),
    ("/jobs?limit=1&limit=2", 400, "limit given 2 times"),
    ("/jobs?sort=id", 400, "unknown parameter(s): sort"),
    (f"/jobs/{uuid.UUID(int=7)}?x=1", 400, "unknown parameter"),
    ("/", 404, "no such path: /"),
    ("/metrics/extra", 404, "no such path"),
])
def test_bad_ids_and_parameters_are_400_and_unknown_paths_404_in_json(
        admin: tuple[AdminApp, int], path: str, code: int, message: str) -> None:
    _, port = admin
    answer = request(port, path)
    assert answer.status == code
    assert answer.headers["Content-Type"] == "application/json"
    assert message in answer.json()["error"]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_the_api_is_read_only(admin: tuple[AdminApp, int], method: str) -> None:
    _, port = admin
    answer = request(port, "/jobs", method=method)
    assert answer.status == 405
    assert answer.headers["Allow"] == "GET, HEAD"
    assert "read-only" in answer.json()["error"]


def test_a_taken_port_fails_start_up_with_a_clear_error(admin: tuple[AdminApp, int]) -> None:
    app, port = admin
    with pytest.raises(NodesImportError, match=f"cannot listen on 127.0.0.1:{port}"):
        AdminServer(app, "127.0.0.1", port).start()


def test_a_bug_behind_a_route_is_a_json_500(admin: tuple[AdminApp, int]) -> None:
    app, port = admin

    def broken() -> str | None:
        raise RuntimeError("boom")

    app.readiness = broken
    answer = request(port, "/readyz")
    assert (answer.status, answer.json()) == (500, {"error": "internal error"})


def test_run_with_a_taken_admin_port_exits_1_before_touching_anything(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("NODES_IMPORT_")}
        result = subprocess.run(
            [sys.executable, "-m", "nodes_import", "run", "--dsn",
             "postgresql://ops:s3cret@127.0.0.1:1/x", "--bootstrap-servers", "127.0.0.1:1",
             "--admin-port", str(port)], cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=60, check=False)
    assert result.returncode == 1
    assert f"admin API cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "s3cret" not in result.stderr


def test_with_a_token_every_route_but_the_probes_needs_it(db: Database) -> None:
    server = AdminServer(AdminApp(pool=db.pool, token="s3cret-token"), "127.0.0.1", 0)
    port = server.start()
    try:
        for path in ("/metrics", "/jobs", f"/jobs/{uuid.uuid4()}", "/nowhere"):
            refused = request(port, path)
            assert refused.status == 401, path
            assert refused.headers["WWW-Authenticate"].startswith("Bearer")
            assert "s3cret" not in refused.body.decode()
            wrong = request(port, path, headers={"Authorization": "Bearer s3cret-tokem"})
            assert wrong.status == 401, path
        good = {"Authorization": "Bearer s3cret-token"}
        assert request(port, "/metrics", headers=good).status == 200
        assert request(port, "/jobs", headers=good).status == 200
        assert request(port, "/nowhere", headers=good).status == 404
        assert request(port, "/healthz").status == 200  # probes carry no token
        assert request(port, "/readyz").status == 200
    finally:
        server.close()


def test_a_daemon_config_reads_the_token_from_the_environment_and_never_shows_it() -> None:
    from nodes_import import config as config_mod

    cfg = config_mod.load(None, {}, environ={
        "NODES_IMPORT_ADMIN_TOKEN": "from-env",
        "NODES_IMPORT_DATABASE_DSN": "postgresql://u:db-secret@h/d",
        "NODES_IMPORT_KAFKA_CONSUMER_PROPERTIES": "{sasl.password: kafka-secret}"})
    assert cfg.operations.admin_token == "from-env"
    assert cfg.kafka.consumer_properties["sasl.password"] == "kafka-secret"
    for secret in ("from-env", "db-secret", "kafka-secret"):
        assert secret not in repr(cfg), secret
    assert config_mod.load(None, {}, environ={}).operations.admin_token is None


def test_only_loopback_hosts_count_as_private_for_the_no_token_warning() -> None:
    from nodes_import.daemon.admin import _loopback

    assert all(_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "localhost"))
    assert not any(_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "admin.example"))
