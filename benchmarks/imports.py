"""Question: how fast is ``nodes-import import`` itself, per kind of file?

Each scenario runs the real command line (a subprocess, start-up included) against the
run's throwaway server, in its own schema:

1. ``fresh``: every row a new node;
2. ``unchanged``: the same file again (must write no new row versions);
3. ``changed 10%``: every 10th row's metadata changed;
4. ``changed 100%``: every row changed;
   (2-4 run in this order on the schema 1 filled, each against the state the previous
   one left; ``VACUUM ANALYZE`` + ``CHECKPOINT`` between them, as autovacuum would);
5. ``reference IDs``: a list of new IDs, no metadata (the non-cost-based path);
6. with ``extras``: 1% bad rows, duplicate-heavy (20% repeated keys);
7. with ``rss_rows``: a large fresh import, for the client's peak RSS.

With ``proposal`` (see ``benchmarks/proposals.py``) every scenario runs on the engine
with that patch applied.

Run alone: ``python -m benchmarks.imports --rows 200000``.
"""

from __future__ import annotations

import argparse
import compileall
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from benchmarks import generate
from benchmarks.harness import DOMAIN, GROUP, BenchServer, Result, meter, run_cli, settings_env

REPO = Path(__file__).resolve().parent.parent


def compile_package() -> None:
    """The package's bytecode, as pip writes it when operators install: otherwise every
    `nodes-import` run of a benchmark compiles the sources again where
    PYTHONDONTWRITEBYTECODE is set (~0.05-0.07 s of client CPU a run here)."""
    compileall.compile_dir(str(REPO / "nodes_import"), quiet=1)


def engine_program(proposal: str | None) -> list[str] | None:
    """The command for the engine as it is (None) or with a proposal applied."""
    if not proposal:
        return None
    return [sys.executable, "-m", "benchmarks.proposals", proposal]


def import_once(server: BenchServer, schema: str, path: Path, name: str, rows: int, *,
                ids: bool = False, kind: str = "scenario", settings: dict[str, Any] | None = None,
                wrap: list[str] | None = None, proposal: str | None = None,
                timeout_s: float | None = None, expect_failed: int = 0,
                source: str | None = None, env_extra: dict[str, str] | None = None) -> Result:
    """One ``nodes-import import`` run, metered; ``rows`` is the file's row count.

    ``source``: what the command is given instead of ``path`` (a URI of the same file);
    ``env_extra``: more environment (where that URI is allowed and reached).

    The run counts as failed unless the job COMPLETED with exactly ``expect_failed``
    rejected rows (a batch that timed out is recorded as failed rows).

    ``timeout_s`` becomes the job's global timeout: a run over it ends FAILED and is
    reported as such (rows/s 0, the reason in ``notes``) instead of stopping the suite.
    """
    given = source or str(path)
    args = ["import", *(["--reference-ids", given] if ids else [given]),
            "--group", GROUP, "--domain", DOMAIN, "--dsn", server.schema_dsn(schema), "--json"]
    env = settings_env(**(settings or {}))
    env["NODES_IMPORT_NODE_IMPORT_ALLOWED_ROOTS"] = str(path.parent)
    env["PYTHONPATH"] = str(REPO)
    env.update(env_extra or {})
    if timeout_s:
        env["NODES_IMPORT_NODE_IMPORT_GLOBAL_TIMEOUT_MS"] = str(int(timeout_s * 1000))
        env["NODES_IMPORT_NODE_IMPORT_RETRY_MAX_ATTEMPTS"] = "1"
    params = dict(settings or {})
    if proposal:
        params["proposal"] = proposal
    result = Result(name, kind, rows, 0, path.stat().st_size, params=params)
    server.settle(schema)
    with meter(server, schema, result):
        wall, cpu, rss, out = run_cli(args, env, wrap, engine_program(proposal), check=False)
        # the JSON job row is the last JSON line (a profiler wrapped around it prints too)
        job = orjson.loads(next(line for line in reversed(out.strip().splitlines())
                                if line.startswith("{")))
        result.seconds = wall
        result.ok = job["status"] == "COMPLETED" and job["failed_count"] == expect_failed
    result.client_cpu_s = round(cpu, 2)
    result.client_peak_rss_mb = round(rss, 1)
    started, finished = job.get("started_at"), job.get("finished_at")
    if started and finished:
        result.job_seconds = round((datetime.fromisoformat(finished)
                                    - datetime.fromisoformat(started)).total_seconds(), 3)
    result.notes = (f"inserted {job['inserted_count']:,} updated {job['updated_count']:,} "
                    f"unchanged {job['unchanged_count']:,} failed {job['failed_count']:,}")
    if not result.ok:
        # A timed-out job leaves its statements running until statement_timeout: end
        # them (this run's own server) so they do not slow the next measurement.
        server.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                     " WHERE application_name = 'nodes-import' AND pid <> pg_backend_pid()")
        result.notes = f"{job['status']}: {job.get('error') or ''} ({result.notes})"
    return result


def run_all(server: BenchServer, data_dir: Path, rows: int, *, extras: bool = False,
            rss_rows: int = 0, proposal: str | None = None,
            timeout_s: float | None = None) -> list[Result]:
    """Scenarios 1-5 (and 6, 7 when asked) on ``rows``-row files.

    ``proposal``: every scenario runs with it applied (the name says so). A fresh import
    that fails (e.g. over ``timeout_s``) is reported as failed, and the table the
    re-imports need is then loaded again with the ``lateral`` proposal (not measured).
    """
    label = f" [{proposal}]" if proposal else ""
    files = {v: generate.ensure(data_dir, v, rows) for v in
             ("new", "changed10", "changed100", "ids")}
    results = []
    schema = server.new_schema("eng")
    fresh = import_once(server, schema, files["new"], "fresh import" + label, rows,
                        proposal=proposal, timeout_s=timeout_s)
    results.append(fresh)
    if not fresh.ok:
        server.drop_schema(schema)
        schema = server.new_schema("eng")
        setup = import_once(server, schema, files["new"], "setup", rows, proposal="lateral")
        fresh.notes += "; re-imports below ran on a table loaded with [lateral]"
        assert setup.ok, setup.notes
    steps = [("new", "re-import unchanged"), ("changed10", "re-import 10% changed"),
             ("changed100", "re-import 100% changed")]
    for variant, name in steps:
        results.append(import_once(server, schema, files[variant], name + label, rows,
                                   proposal=proposal, timeout_s=timeout_s))
    server.drop_schema(schema)
    schema = server.new_schema("ids")
    results.append(import_once(server, schema, files["ids"], "reference IDs (fresh)" + label,
                               rows, ids=True, proposal=proposal, timeout_s=timeout_s))
    server.drop_schema(schema)
    if extras:
        for variant, name in (("bad1", "fresh, 1% bad rows"), ("dups", "fresh, 20% duplicates")):
            schema = server.new_schema(variant)
            results.append(import_once(server, schema, generate.ensure(data_dir, variant, rows),
                                       name + label, rows, proposal=proposal,
                                       timeout_s=timeout_s,
                                       expect_failed=rows // 100 if variant == "bad1" else 0))
            server.drop_schema(schema)
    if rss_rows:
        schema = server.new_schema("big")
        path = generate.ensure(data_dir, "new", rss_rows)
        results.append(import_once(server, schema, path, f"fresh import {rss_rows:,} rows{label}",
                                   rss_rows, proposal=proposal))
        server.drop_schema(schema)
    return results


def main() -> None:
    """Command line: the scenarios alone (no baselines, so no ratios)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/nodes-import-bench"))
    parser.add_argument("--proposal", default=None,
                        choices=["lateral", "no-analyze", "lateral-no-analyze"])
    parser.add_argument("--timeout", type=float, default=None, help="per-job limit, seconds")
    args = parser.parse_args()
    with BenchServer() as server:
        for r in run_all(server, args.data_dir, args.rows, proposal=args.proposal,
                         timeout_s=args.timeout):
            print(f"{r.name:30} {r.seconds:8.2f}s {r.rows_per_s:12,.0f} rows/s cpu "
                  f"{r.client_cpu_s}s rss {r.client_peak_rss_mb}MB server {r.server_cpu_s}s "
                  f"wal {r.wal_bytes} versions {r.new_row_versions} dead {r.dead_tuples} "
                  f"{r.notes}")


if __name__ == "__main__":
    main()
