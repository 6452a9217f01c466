"""Question: does the import keep its pace when `nodes` already holds 20M rows? (issue 17,
scenario 3)

A cached cluster (an embedded PostgreSQL kept in ``$NODES_IMPORT_BENCH_DATA/pg-big``) holds a
``big`` schema whose ``nodes`` and ``node_metadata`` carry ``base`` rows (20M) of other
groups: the generator's reference IDs (``ext-NNNNNNNNNN-hash``) in groups of 2M, so the
measured file's keys fall between theirs in the unique index, and ~160-byte metadata. It
is built once (server-side ``INSERT ... SELECT``, the secondary indexes and the foreign key
added after) and reused while its row count matches. On it, 1M rows of the bench group:

- B and C★ into the same 20M-row tables (the ratios' yardsticks);
- the fresh import, the unchanged re-import, the all-changed re-import (``nodes-import
  import``, as in ``imports.py``);
- ``EXPLAIN (ANALYZE, BUFFERS, WAL)`` of one batch statement of the fresh import at 20M;
- the tables' and indexes' sizes against ``shared_buffers``.

After each measurement the bench group's rows are deleted and the tables vacuumed, so the
next one starts from the same 20M rows. ``bin/bench --large`` runs it (``run.py``); alone::

    .venv/bin/python -m benchmarks.big_table --base-rows 20000000
    .venv/bin/python -m benchmarks.big_table --batch-size 10000 --shared-buffers 1GB
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from benchmarks import baselines, generate, imports
from benchmarks.harness import DOMAIN, GROUP, BenchServer, Result
from nodes_import.config import ImportConfig
from nodes_import.pipeline import encode
from nodes_import.pipeline.parse import CsvReader
from nodes_import.pipeline.source import Source
from nodes_import.store import batchwrite, connection

SCHEMA = "big"
BASE_ROWS = 20_000_000
GROUP_ROWS = 2_000_000  # keys per group of the base rows

# The base rows, server-side: reference IDs as generate.reference_id makes them.
_FILL_NODES = """
INSERT INTO nodes (id, reference_id, group_id, type, domain_id)
SELECT uuidv7(),
       'ext-' || lpad((g % {keys})::text, 10, '0') || '-'
           || lpad(to_hex(((g % {keys}) * 2654435761) & 4294967295), 8, '0'),
       'big-' || (g / {keys}), 'USER', {domain}
FROM generate_series({first}, {last}) g
"""
_FILL_METADATA = """
INSERT INTO node_metadata (node_id, metadata)
SELECT id, jsonb_build_object(
    'email', 'user.' || reference_id || '@mail.example-company.com',
    'first_name', 'Grace', 'last_name', 'Hopper', 'country', 'United Kingdom',
    'plan', 'enterprise-annual')
FROM nodes WHERE group_id = {group}
"""


def _connect(server: BenchServer) -> psycopg.Connection[Any]:
    return psycopg.connect(server.schema_dsn(SCHEMA), autocommit=True)


def ensure_base(server: BenchServer, base_rows: int) -> float:
    """The ``big`` schema with ``base_rows`` rows, built unless already there; the seconds
    the build took (0: cached)."""
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s",
                           (SCHEMA,)).fetchone()
        if row and row[0]:
            with _connect(server) as big:
                info = big.execute("SELECT rows FROM bench_info").fetchone()
                if info and info[0] == base_rows:
                    return 0.0
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
    started = time.monotonic()
    with _connect(server) as conn:
        with conn.transaction():
            connection.init_schema(conn)
        # Secondary indexes and the foreign key after the load: a build, not a measurement.
        conn.execute("ALTER TABLE node_metadata DROP CONSTRAINT node_metadata_node_id_fkey")
        conn.execute("DROP INDEX idx_nodes_reference_group")
        conn.execute("DROP INDEX idx_nodes_domain")
        for first in range(0, base_rows, GROUP_ROWS):
            last = min(first + GROUP_ROWS, base_rows) - 1
            conn.execute(sql.SQL(_FILL_NODES).format(
                keys=sql.Literal(GROUP_ROWS), domain=sql.Literal(DOMAIN),
                first=sql.Literal(first), last=sql.Literal(last)))
            conn.execute(sql.SQL(_FILL_METADATA).format(
                group=sql.Literal(f"big-{first // GROUP_ROWS}")))
            print(f"    base: {last + 1:,} rows", flush=True)
        conn.execute("CREATE UNIQUE INDEX idx_nodes_reference_group"
                     " ON nodes (reference_id, group_id)")
        conn.execute("CREATE INDEX idx_nodes_domain ON nodes (domain_id)")
        conn.execute("ALTER TABLE node_metadata ADD CONSTRAINT node_metadata_node_id_fkey"
                     " FOREIGN KEY (node_id) REFERENCES nodes (id) ON DELETE CASCADE")
        conn.execute("ALTER TABLE nodes ALTER COLUMN id SET DEFAULT uuidv7()")  # B's COPY
        conn.execute("VACUUM (ANALYZE) nodes")
        conn.execute("VACUUM (ANALYZE) node_metadata")
        conn.execute("CREATE TABLE bench_info (rows bigint)")
        conn.execute("INSERT INTO bench_info VALUES (%s)", (base_rows,))
    return time.monotonic() - started


def restore(server: BenchServer) -> None:
    """Back to the base rows: the bench group's nodes deleted (their metadata with them),
    the tables vacuumed, a checkpoint."""
    with _connect(server) as conn:
        conn.execute("DELETE FROM nodes WHERE group_id = %s", (GROUP,))
        conn.execute("DELETE FROM job_failures")
        conn.execute("DELETE FROM job_status")
        conn.execute("VACUUM (ANALYZE) nodes")
        conn.execute("VACUUM (ANALYZE) node_metadata")
        conn.execute("CHECKPOINT")


def sizes(server: BenchServer) -> dict[str, Any]:
    """Sizes (MB) of the tables and their indexes, and shared_buffers."""
    with _connect(server) as conn:
        rows = conn.execute(
            "SELECT c.relname, pg_relation_size(c.oid) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relkind IN ('r', 'i')"
            " AND c.relname ~ '^(nodes|node_metadata|idx_nodes|nodes_pkey|node_metadata_pkey)'",
            (SCHEMA,)).fetchall()
        shared = conn.execute("SELECT pg_size_bytes(current_setting('shared_buffers'))"
                              ).fetchone()
    return {"shared_buffers_mb": round(int(shared[0]) / 2**20) if shared else None,
            **{name: round(int(size) / 2**20) for name, size in sorted(rows)}}


def explain_batch(server: BenchServer, path: Path, batch_size: int | None = None) -> str:
    """EXPLAIN (ANALYZE, BUFFERS, WAL) of the fresh import's statement for one writer's part
    of a batch (the file's first ``batch_size`` / writers rows; the default batch size
    unless given) against the big table, rolled back."""
    cfg = ImportConfig()
    rows = (batch_size or cfg.batch_size) // cfg.max_parallel_futures
    src = Source(str(path), allowed_roots=[str(path.parent)], max_file_bytes=cfg.max_file_bytes,
                 max_decompressed_bytes=cfg.max_decompressed_bytes)
    reader = CsvReader(src, block_size=cfg.block_size_bytes, batch_size=rows,
                       max_columns=cfg.max_columns)
    batch = next(iter(reader.batches()))
    part = encode.encode_batch(batch, reader.header, 1)[0]
    conn = psycopg.connect(server.schema_dsn(SCHEMA))
    try:
        connection._configure(conn)
        with conn.transaction(force_rollback=True), conn.cursor() as cur:
            cur.execute("SET LOCAL enable_seqscan = off")  # as write_part does
            copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT text)").format(
                sql.Identifier(connection.STAGE_TABLE),
                sql.SQL(", ").join(map(sql.Identifier, encode.staged_columns(reader.header))))
            with cur.copy(copy_sql) as copy:
                for piece in part.payload:
                    copy.write(piece)
            cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(connection.STAGE_TABLE)))
            statement = sql.SQL(batchwrite._UPSERT).format(
                stage=sql.Identifier(connection.STAGE_TABLE), group=sql.Literal(GROUP),
                domain=sql.Literal(DOMAIN), default_type=sql.Literal("USER"),
                new_id=sql.SQL(connection.new_id_function(conn)))
            plan = cur.execute(sql.SQL("EXPLAIN (ANALYZE, BUFFERS, WAL) ") + statement
                               ).fetchall()
    finally:
        conn.close()
    return "\n".join(str(r[0]) for r in plan)


def _measured(server: BenchServer, results: list[Result], step: Callable[[], Result]) -> None:
    """One measurement on the base rows, then back to them."""
    results.append(step())
    restore(server)


def measure(server: BenchServer, data_dir: Path, rows: int, base_rows: int = BASE_ROWS,
            settings: dict[str, Any] | None = None) -> tuple[list[Result], dict[str, Any]]:
    """B, C★ and the three imports into the big tables; the plan and the sizes.
    ``settings``: the imports' (``batch_size=...``, as ``imports.import_once`` takes them)."""
    build_s = ensure_base(server, base_rows)
    restore(server)  # a run that stopped half-way left the bench group behind
    new = generate.ensure(data_dir, "new", rows)
    changed = generate.ensure(data_dir, "changed100", rows)
    data = baselines.prepare(new, only_b=True)
    dsn = server.schema_dsn(SCHEMA)
    results: list[Result] = []
    _measured(server, results, lambda: baselines.copy_b(server, data, schema=SCHEMA,
                                                        dsn=dsn))
    _measured(server, results, lambda: baselines.copy_c_star(server, data, schema=SCHEMA,
                                                             dsn=dsn))
    fresh = imports.import_once(server, SCHEMA, new, "fresh import", rows, settings=settings)
    unchanged = imports.import_once(server, SCHEMA, new, "re-import unchanged", rows,
                                    settings=settings)
    all_changed = imports.import_once(server, SCHEMA, changed, "re-import 100% changed", rows,
                                      settings=settings)
    results += [fresh, unchanged, all_changed]
    restore(server)
    info = {"base_rows": base_rows, "build_s": round(build_s, 1), "sizes": sizes(server),
            "explain": explain_batch(server, new, (settings or {}).get("batch_size"))}
    b, c = results[0], results[1]
    for r in results:
        r.name += f" (into {base_rows / 1e6:g}M-row tables)"
        r.kind, r.params["big"] = "big", True
        r.ratio_b = round(r.rows_per_s / b.rows_per_s, 3) if b.rows_per_s and r.ok else None
        r.ratio_cstar = round(r.rows_per_s / c.rows_per_s, 3) if c.rows_per_s and r.ok else None
    return results, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--base-rows", type=int, default=BASE_ROWS)
    parser.add_argument("--data-dir", type=Path, default=Path(
        os.environ.get("NODES_IMPORT_BENCH_DATA", "/tmp/nodes-import-bench")))
    parser.add_argument("--batch-size", type=int, help="the imports' node.import.batch.size")
    parser.add_argument("--shared-buffers", help="the server's shared_buffers (e.g. 1GB; "
                        "default: PostgreSQL's 128MB)")
    args = parser.parse_args()
    with BenchServer(keep=args.data_dir / "pg-big", shared_buffers=args.shared_buffers) \
            as server:
        results, info = measure(server, args.data_dir, args.rows, args.base_rows,
                                {"batch_size": args.batch_size} if args.batch_size else None)
    for r in results:
        print(f"{r.name}: {r.seconds:.2f} s, {r.rows_per_s:,.0f} rows/s, x B {r.ratio_b}, "
              f"x C★ {r.ratio_cstar}, server CPU {r.server_cpu_s} s, WAL "
              f"{(r.wal_bytes or 0) / 1e6:,.0f} MB")
    print(f"base {info['base_rows']:,} rows (built in {info['build_s']} s; 0: cached); "
          f"sizes MB {info['sizes']}")
    print(info["explain"])


if __name__ == "__main__":
    main()
