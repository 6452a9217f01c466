"""A command loads only what it uses: the help, the jobs family's help and the dry run
start without the database client, the Kafka client or (but the dry run) Arrow. Checked
by what a fresh process has imported, never by a clock."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

# The costly imports a command may leave out (tens of ms of CPU each at start-up).
HEAVY = ("psycopg", "psycopg_pool", "pyarrow", "confluent_kafka", "prometheus_client",
         "yaml")
CODE = f"""
import sys
from nodes_import.cli import main
try:
    main(sys.argv[1:], prog_name="nodes-import")
except SystemExit:
    pass
print(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r}))
"""


def _heavy_modules_loaded(*args: str) -> list[str]:
    result = subprocess.run([sys.executable, "-c", CODE, *args], capture_output=True,
                            text=True, timeout=60, check=True)
    loaded: list[str] = ast.literal_eval(result.stdout.strip().splitlines()[-1])
    return sorted({m.split(".")[0] for m in loaded})


@pytest.mark.parametrize("args", [["--help"], ["jobs", "--help"], ["jobs", "list", "--help"],
                                  ["import", "--help"], ["submit", "--help"],
                                  ["dlq", "--help"], ["run", "--help"], ["db", "--help"]],
                         ids=" ".join)
def test_a_help_loads_no_heavy_module(args: list[str]) -> None:
    assert _heavy_modules_loaded(*args) == []


def test_the_dry_run_loads_arrow_alone(tmp_path: Path) -> None:
    path = tmp_path / "users.csv"
    path.write_text("reference_id,email\nu1,a@example.com\nu2,b@example.com\n")
    assert _heavy_modules_loaded("import", str(path), "--dry-run") == ["pyarrow"]
