"""Question: how fast can PostgreSQL on this machine take these rows, by other ways?

The yardsticks every scenario is divided by, measured in the same run on the same
decompressed rows (all client-side preparation is done before the clock starts, so only
the database design is timed; this favours the baselines):

- ``raw-copy``: the bytes-in limit, one ``COPY`` of the CSV into an unindexed text table;
- ``B``: the index-bound limit, one ``COPY`` into a nodes-shaped table with its three
  indexes (primary key with ``uuidv7()`` ids as the engine uses on PostgreSQL 18, the
  unique (reference_id, group_id), domain_id), no metadata, no upsert;
- ``C★``: the schema's own limit (issue 17): the same rows into the real ``nodes`` AND
  ``node_metadata`` (its foreign key checked), one ``COPY`` each per connection, on 2
  connections (as the engine's 2 writers) each loading one run of consecutive keys in one
  transaction, keys pre-sorted, time-ordered ids (uuidv7 layout, ascending) chosen and the
  metadata JSON built before the clock starts. Everything the import must do and nothing
  it may skip, in the cheapest order the schema allows;
- ``seed-design``: the seed LLD as written: 500-row batches, each CREATE TEMP TABLE +
  COPY + nodes upsert + node_metadata upsert + commit, on 4 threads/connections;
- ``naive``: psycopg ``executemany`` of one INSERT ... ON CONFLICT per row (nodes and its
  metadata in one statement), 1,000 rows a transaction, one connection;
- ``client floor``: no database at all: a Python process that imports pyarrow and ISA-L and
  reads the gzipped CSV through the same reader settings as the engine (1 MiB blocks, every
  column a string), then exits. Its CPU is what any importer built on these libraries spends
  on this machine; the engine's client CPU divided by it travels between machines, where
  seconds do not.

Run alone: ``python -m benchmarks.baselines --rows 200000``.
"""

from __future__ import annotations

import argparse
import gzip
import io
import queue
import resource
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from benchmarks import generate
from benchmarks.harness import DOMAIN, GROUP, BenchServer, Result, meter, run_cli
from nodes_import.pipeline.encode import metadata_json
from nodes_import.store import connection

# COPY write size: large enough that per-call overhead is nil.
_COPY_CHUNK = 1 << 20
SEED_BATCH = 500
SEED_THREADS = 4
NAIVE_BATCH = 1_000

_B_TABLE = """
CREATE TABLE nodes_b (
    id           UUID PRIMARY KEY DEFAULT {id},
    reference_id VARCHAR(255) NOT NULL,
    group_id     VARCHAR(255) NOT NULL,
    type         VARCHAR(64) NOT NULL,
    domain_id    UUID NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE UNIQUE INDEX ON nodes_b (reference_id, group_id);
CREATE INDEX ON nodes_b (domain_id);
"""

_SEED_UPSERT = """
WITH n AS (
    INSERT INTO nodes (id, reference_id, group_id, type, domain_id)
    SELECT gen_random_uuid(), reference_id, %(group)s, 'USER', %(domain)s FROM tmp_nodes
    ON CONFLICT (reference_id, group_id) DO UPDATE
        SET type = EXCLUDED.type, domain_id = EXCLUDED.domain_id, updated_at = now()
    RETURNING id, reference_id
)
INSERT INTO node_metadata (node_id, metadata)
SELECT n.id, t.metadata FROM n JOIN tmp_nodes t USING (reference_id)
ON CONFLICT (node_id) DO UPDATE SET metadata = EXCLUDED.metadata
"""

_NAIVE_UPSERT = """
WITH n AS (
    INSERT INTO nodes (id, reference_id, group_id, type, domain_id)
    VALUES (gen_random_uuid(), %s, %s, 'USER', %s)
    ON CONFLICT (reference_id, group_id) DO UPDATE
        SET type = EXCLUDED.type, domain_id = EXCLUDED.domain_id, updated_at = now()
    RETURNING id
)
INSERT INTO node_metadata (node_id, metadata) SELECT id, %s::jsonb FROM n
ON CONFLICT (node_id) DO UPDATE SET metadata = EXCLUDED.metadata
"""


@dataclass
class Prepared:
    """The same rows in each baseline's input form, built before any clock starts."""

    rows: int
    compressed_bytes: int
    raw_csv: bytes  # decompressed, header removed
    b_csv: bytes  # reference_id, group_id, type, domain_id
    seed_batches: list[bytes]  # reference_id, metadata JSON; SEED_BATCH rows each
    naive_params: list[tuple[str, str, str, str]]
    c_nodes: bytes = b""  # C★: id, reference_id, group_id, type, domain_id (COPY text)
    c_metadata: bytes = b""  # C★: node_id, metadata (COPY text)


def prepare(path: Path, *, only_b: bool = False, c_star: bool = True) -> Prepared:
    """Decompress and parse ``path`` once; build every baseline's input (``only_b``: B's
    alone, for 10M rows, where the naive baseline's Python tuples would take gigabytes)."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    table = pacsv.read_csv(pa.py_buffer(data), convert_options=pacsv.ConvertOptions(
        column_types={name: pa.string() for name in generate.HEADER.strip().split(",")}))
    rows = table.num_rows
    refs = table.column("reference_id")
    b_table = pa.table({"reference_id": refs,
                        "group_id": pa.repeat(pa.scalar(GROUP), rows),
                        "type": pa.repeat(pa.scalar("USER"), rows),
                        "domain_id": pa.repeat(pa.scalar(DOMAIN), rows)})
    meta = metadata_json(table, [c for c in table.column_names if c != "reference_id"])
    c_nodes, c_metadata = _c_star_payloads(refs, meta) if c_star else (b"", b"")
    if only_b:
        return Prepared(rows, path.stat().st_size, b"", _csv(b_table), [], [],
                        c_nodes, c_metadata)
    raw_csv = data[data.index(b"\n") + 1:]
    staged = pa.table({"reference_id": refs, "metadata": meta})
    seed_batches = [_csv(staged.slice(off, SEED_BATCH)) for off in range(0, rows, SEED_BATCH)]
    naive_params = [(ref, GROUP, DOMAIN, m) for ref, m in
                    zip(refs.to_pylist(), meta.to_pylist(), strict=True)]
    return Prepared(rows, path.stat().st_size, raw_csv, _csv(b_table), seed_batches,
                    naive_params, c_nodes, c_metadata)


def _time_ordered_ids(count: int) -> pa.Array:
    """``count`` ascending UUIDs in the uuidv7 layout (48-bit milliseconds, version 7, a
    counter in the random bits), as PostgreSQL 18's ``uuidv7()`` makes them in one session."""
    millis = time.time_ns() // 1_000_000
    ids = (uuid.UUID(int=(millis << 80) | (0x7 << 76) | (0b10 << 62) | n) for n in range(count))
    return pa.array([str(u) for u in ids], pa.string())


def _c_star_payloads(refs: pa.ChunkedArray, meta: pa.ChunkedArray) -> tuple[bytes, bytes]:
    """C★'s two COPY payloads (text format): the rows sorted by reference_id, ids ascending
    in that order, so every index of both tables is appended to at its right edge."""
    order = pc.sort_indices(refs)
    refs, meta = pc.take(refs, order), pc.take(meta, order)
    ids = _time_ordered_ids(len(refs))
    nodes = pa.table({"id": ids, "reference_id": refs,
                      "group_id": pa.repeat(pa.scalar(GROUP), len(refs)),
                      "type": pa.repeat(pa.scalar("USER"), len(refs)),
                      "domain_id": pa.repeat(pa.scalar(DOMAIN), len(refs))})
    # COPY text: a backslash escapes; the JSON's own backslashes are doubled
    metadata = pa.table({"node_id": ids, "metadata": pc.replace_substring(
        meta, "\\", "\\\\")})
    return _text(nodes), _text(metadata)


def _text(table: pa.Table) -> bytes:
    """COPY text format of columns that hold no tab, newline or backslash (but the JSON's
    escaped ones)."""
    lines = pc.binary_join_element_wise(*table.columns, "\t")
    return "\n".join(lines.to_pylist()).encode() + b"\n"


def _csv(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pacsv.write_csv(table, sink, write_options=pacsv.WriteOptions(
        include_header=False, quoting_style="needed"))
    return sink.getvalue()


def _copy(conn: psycopg.Connection, statement: str, payload: bytes) -> None:
    with conn.cursor() as cur, cur.copy(statement) as copy:  # type: ignore[arg-type]
        view = memoryview(payload)
        for off in range(0, len(view), _COPY_CHUNK):
            copy.write(view[off:off + _COPY_CHUNK])


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _timed(server: BenchServer, schema: str, result: Result, work: callable) -> Result:
    server.settle()
    with meter(server, schema, result):
        cpu = _cpu()
        started = time.perf_counter()
        work()
        result.seconds = time.perf_counter() - started
        result.client_cpu_s = round(_cpu() - cpu, 2)
    return result


def raw_copy(server: BenchServer, data: Prepared) -> Result:
    """One COPY of the decompressed CSV into an unindexed 6-column text table."""
    schema = server.new_schema("raw")
    dsn = server.schema_dsn(schema)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE stage (reference_id text, email text, first_name text,"
                     " last_name text, country text, plan text)")
    result = Result("raw COPY (unindexed)", "baseline", data.rows, 0, data.compressed_bytes)

    def work() -> None:
        with psycopg.connect(dsn) as conn:
            _copy(conn, "COPY stage FROM STDIN (FORMAT csv)", data.raw_csv)
            conn.commit()

    _timed(server, schema, result, work)
    server.drop_schema(schema)
    return result


FLOOR_NAME = "client floor (read + parse, no database)"
_FLOOR = """
import sys
import pyarrow as pa, pyarrow.csv as pacsv
from isal import igzip
with igzip.open(sys.argv[1], "rb") as head:
    names = head.readline().decode().strip().split(",")
with igzip.open(sys.argv[1], "rb") as stream:
    reader = pacsv.open_csv(
        pa.PythonFile(stream, mode="r"),
        read_options=pacsv.ReadOptions(use_threads=False, block_size=1 << 20),
        convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                             strings_can_be_null=True, null_values=[""]))
    print(sum(batch.num_rows for batch in reader))
"""


def client_floor(path: Path, rows: int) -> Result:
    """The CPU of reading and parsing ``path`` alone, in a fresh process (see the module doc)."""
    result = Result(FLOOR_NAME, "baseline", rows, 0, path.stat().st_size)
    wall, cpu, rss, out = run_cli([str(path)], program=[sys.executable, "-c", _FLOOR])
    if int(out.strip().splitlines()[-1]) != rows:
        raise RuntimeError(f"the floor read {out.strip()} rows of {rows}")
    result.seconds, result.client_cpu_s = wall, round(cpu, 2)
    result.client_peak_rss_mb = round(rss, 1)
    return result


def copy_b(server: BenchServer, data: Prepared, id_function: str = "uuidv7()", *,
           schema: str | None = None, dsn: str | None = None) -> Result:
    """B: one COPY into a nodes-shaped table with its three indexes (``schema``: into
    that schema's ``nodes``, whose ``id`` defaults to ``uuidv7()``, kept afterwards)."""
    table = "nodes" if schema else "nodes_b"
    own = schema is None
    schema = schema or server.new_schema("b")
    dsn = dsn or server.schema_dsn(schema)
    if own:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(_B_TABLE.format(id=id_function))  # type: ignore[arg-type]
    name = "B: COPY, 3 indexes" + ("" if id_function == "uuidv7()" else f" ({id_function})")
    result = Result(name, "baseline", data.rows, 0, data.compressed_bytes,
                    params={"id": id_function})

    def work() -> None:
        with psycopg.connect(dsn) as conn:
            _copy(conn, f"COPY {table} (reference_id, group_id, type, domain_id)"
                  " FROM STDIN (FORMAT csv)", data.b_csv)
            conn.commit()

    _timed(server, schema, result, work)
    if own:
        server.drop_schema(schema)
    return result


C_STAR_NAME = "C★: COPY nodes + node_metadata (FK), sorted keys, uuidv7, 2 conns"


def _parts(payload: bytes, parts: int) -> list[bytes]:
    """A COPY text payload cut into ``parts`` runs of whole lines, in order."""
    lines = payload.split(b"\n")[:-1]
    size = -(-len(lines) // parts)
    return [b"\n".join(lines[n:n + size]) + b"\n" for n in range(0, len(lines), size)]


def copy_c_star(server: BenchServer, data: Prepared, connections: int = 2, *,
                schema: str | None = None, dsn: str | None = None) -> Result:
    """C★: the sorted rows in ``connections`` runs of consecutive keys, one connection and
    one transaction each (as the engine's 2 writers use both cores): a COPY into
    ``nodes``, then one into ``node_metadata`` (the engine's schema, foreign key
    checked; ``schema``: into that schema's tables, kept afterwards)."""
    own = schema is None
    if schema is None or dsn is None:
        schema, dsn = _engine_schema(server, "cstar")
    result = Result(C_STAR_NAME, "baseline", data.rows, 0, data.compressed_bytes,
                    params={"id": "uuidv7 layout, ascending", "keys": "sorted",
                            "connections": connections})
    runs = list(zip(_parts(data.c_nodes, connections), _parts(data.c_metadata, connections),
                    strict=True))

    def load(nodes: bytes, metadata: bytes) -> None:
        with psycopg.connect(dsn) as conn:
            _copy(conn, "COPY nodes (id, reference_id, group_id, type, domain_id)"
                  " FROM STDIN (FORMAT text)", nodes)
            _copy(conn, "COPY node_metadata (node_id, metadata) FROM STDIN (FORMAT text)",
                  metadata)
            conn.commit()

    def work() -> None:
        threads = [threading.Thread(target=load, args=run) for run in runs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    _timed(server, schema, result, work)
    if own:
        rows = server.query(f"SELECT count(*) FROM {schema}.node_metadata")  # our own name
        result.ok = rows[0][0] == data.rows
        server.drop_schema(schema)
    return result


def _engine_schema(server: BenchServer, prefix: str) -> tuple[str, str]:
    schema = server.new_schema(prefix)
    dsn = server.schema_dsn(schema)
    with psycopg.connect(dsn) as conn:
        connection.init_schema(conn)
    return schema, dsn


def seed_design(server: BenchServer, data: Prepared) -> Result:
    """The seed LLD: 500-row batches through a per-batch temp table, 4 threads."""
    schema, dsn = _engine_schema(server, "seed")
    result = Result("seed design (500/batch, temp table, 4 thr)", "baseline", data.rows, 0,
                    data.compressed_bytes, params={"batch": SEED_BATCH, "threads": SEED_THREADS})
    batches: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
    params = {"group": GROUP, "domain": DOMAIN}

    def thread_main(conn: psycopg.Connection) -> None:
        while (payload := batches.get()) is not None:
            with conn.transaction():
                conn.execute("CREATE TEMP TABLE tmp_nodes (reference_id text, metadata jsonb)"
                             " ON COMMIT DROP")
                _copy(conn, "COPY tmp_nodes FROM STDIN (FORMAT csv)", payload)
                conn.execute(_SEED_UPSERT, params)

    def work() -> None:
        conns = [psycopg.connect(dsn, autocommit=True) for _ in range(SEED_THREADS)]
        for payload in data.seed_batches:
            batches.put(payload)
        for _ in conns:
            batches.put(None)
        threads = [threading.Thread(target=thread_main, args=(c,)) for c in conns]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for c in conns:
            c.close()

    _timed(server, schema, result, work)
    server.drop_schema(schema)
    return result


def naive(server: BenchServer, data: Prepared) -> Result:
    """psycopg executemany of INSERT ... ON CONFLICT, 1,000 rows a transaction."""
    schema, dsn = _engine_schema(server, "naive")
    result = Result("naive executemany (1,000/txn)", "baseline", data.rows, 0,
                    data.compressed_bytes, params={"batch": NAIVE_BATCH})

    def work() -> None:
        with psycopg.connect(dsn) as conn, conn.cursor() as cur:
            for off in range(0, data.rows, NAIVE_BATCH):
                cur.executemany(_NAIVE_UPSERT, data.naive_params[off:off + NAIVE_BATCH])
                conn.commit()

    _timed(server, schema, result, work)
    server.drop_schema(schema)
    return result


def run_all(server: BenchServer, path: Path, *, slow: bool = True,
            extra_b: bool = False) -> list[Result]:
    """Every baseline on ``path``; ``slow=False`` skips seed and naive (the sweep only)."""
    data = prepare(path)
    results = [client_floor(path, data.rows), raw_copy(server, data), copy_b(server, data),
               copy_c_star(server, data)]
    if extra_b:
        results.append(copy_b(server, data, "gen_random_uuid()"))
    if slow:
        results += [seed_design(server, data), naive(server, data)]
    return results


def main() -> None:
    """Command line: the baselines alone, on generated data."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/nodes-import-bench"))
    args = parser.parse_args()
    path = generate.ensure(args.data_dir, "new", args.rows)
    with BenchServer() as server:
        for r in run_all(server, path, extra_b=True):
            print(f"{r.name:45} {r.seconds:8.2f}s {r.rows_per_s:12,.0f} rows/s "
                  f"cpu {r.client_cpu_s}s server {r.server_cpu_s}s wal {r.wal_bytes}")


if __name__ == "__main__":
    main()
