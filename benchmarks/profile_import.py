"""Question: where does the time of a fresh import go, client and server side?

Two views of one fresh import through ``nodes-import import``:

- the client, sampled by ``py-spy record --idle --threads`` (wall-clock samples, waits
  included), each sample put in one stage by the innermost engine frame it is in:
  decompress / parse / encode / queue wait (the reader thread) and COPY / upsert /
  counters / commit / idle (the writer threads), plus start-up and finish;
- the server, from ``pg_stat_statements``: execution time per statement kind.

Statements are told apart by the source line the engine frame is on (its text, not its
number), so the split survives edits to the engine. Needs ``py-spy`` (a dev tool,
``pip install py-spy``; ptrace must be allowed).

Run alone: ``python -m benchmarks.profile_import --rows 1000000``.
"""

from __future__ import annotations

import argparse
import linecache
import re
import shutil
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import nodes_import
from benchmarks import generate
from benchmarks.harness import VENV_BIN, BenchServer, Result
from benchmarks.imports import import_once

SAMPLE_RATE = 100  # py-spy samples per second
_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^():]+):(?P<line>\d+)\)$")
_PKG = Path(nodes_import.__file__).parent

# Order matters: the first rule that matches a frame (innermost first) names the stage.
_READER_RULES = [
    ("decompress", lambda f, text: f.endswith("pipeline/source.py")),
    ("parse", lambda f, text: f.endswith("pipeline/parse.py")),
    ("encode", lambda f, text: f.endswith("pipeline/encode.py")),
    ("queue wait (back-pressure)", lambda f, text: f.endswith("worker/reader.py")
     and ".put(" in text),
]
_WRITER_RULES = [
    ("idle (waiting for a batch)", lambda f, text: f.endswith("engine.py") and "inbox.get" in text),
    ("COPY", lambda f, text: f.endswith("batchwrite.py") and "copy" in text.lower()
     and "_copy_failures" not in text),
    ("upsert", lambda f, text: f.endswith("batchwrite.py") and "_upsert" in text.lower()),
    ("counters", lambda f, text: f.endswith("batchwrite.py") and "_COUNTERS" in text),
    ("ANALYZE stage", lambda f, text: f.endswith("batchwrite.py") and "ANALYZE" in text),
    ("commit", lambda f, text: f.endswith("batchwrite.py") and "transaction()" in text),
    ("connection pool", lambda f, text: f.endswith("engine.py") and "pool.connection" in text),
]


def _frames(stack: str) -> list[tuple[str, str, str]]:
    out = []
    for part in stack.split(";")[1:]:
        m = _FRAME.match(part)
        if m:
            out.append((m["func"], m["file"], m["line"]))
    return out


def _source_line(file: str, line: str) -> str:
    path = _PKG / file.split("nodes_import/", 1)[1] if "nodes_import/" in file else Path(file)
    return linecache.getline(str(path), int(line)).strip()


def classify(stack: str) -> tuple[str, str]:
    """(thread role, stage) of one collapsed py-spy stack."""
    frames = _frames(stack)
    funcs = {f for f, _, _ in frames}
    thread = stack.split(";", 1)[0]  # "thread (tid): name" (no name: a native thread)
    if "_writer" in funcs or ": writer-" in thread:
        role = "writer"
    elif "MainThread" in thread or "read_next_batch" in stack or "CountingStream.read" in stack:
        role = "reader/main"  # pyarrow's read-ahead thread decompresses for the reader
    else:
        return "background", "pool workers, timers (mostly idle)"
    rules = _WRITER_RULES if role == "writer" else _READER_RULES
    for _func, file, line in reversed(frames):  # innermost first
        if "nodes_import" not in file:
            continue
        text = _source_line(file, line)
        for stage, rule in rules:
            if rule(file, text):
                return role, stage
    if role == "reader/main":
        if "MainThread" not in stack.split(";", 1)[0]:
            return role, "read-ahead thread, waiting"
        if "run_import" not in funcs:
            return role, "start-up, schema check, exit"
        if "Thread.join" in stack:
            return role, "waiting for the writers (join)"
        if "_finish" in funcs:
            return role, "finish"
        if "read_all" not in funcs:
            return role, "job start / end (status rows, thread joins)"
    return role, "other"


def split(raw: Path) -> dict[str, dict[str, float]]:
    """Seconds of wall time per (thread role, stage), from py-spy's raw output."""
    totals: dict[str, Counter[str]] = defaultdict(Counter)
    threads: dict[str, set[str]] = defaultdict(set)
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        role, stage = classify(stack)
        totals[role][stage] += int(count)
        threads[role].add(stack.split(";", 1)[0])
    return {role: {stage: round(n / SAMPLE_RATE, 2) for stage, n in stages.most_common()}
            | {"threads": len(threads[role])} for role, stages in totals.items()}


def server_split(server: BenchServer) -> list[dict[str, Any]]:
    """Execution time per statement kind since the last reset, largest first."""
    rows = server.query(
        "SELECT CASE WHEN query LIKE 'COPY%%nodes_import_stage%%' THEN 'COPY into stage'"
        " WHEN query LIKE 'WITH src AS%%' THEN 'upsert (nodes + node_metadata)'"
        " WHEN query LIKE 'UPDATE job_status SET total_nodes%%' THEN 'counters + checkpoint'"
        " WHEN query ILIKE 'COMMIT%%' THEN 'COMMIT' WHEN query ILIKE 'BEGIN%%' THEN 'BEGIN'"
        " WHEN query ILIKE 'SET LOCAL%%' OR query ILIKE 'SET %%' THEN 'SET LOCAL'"
        " WHEN query ILIKE 'ANALYZE%%nodes_import_stage%%' THEN 'ANALYZE stage'"
        " ELSE 'other' END AS kind, sum(calls), round(sum(total_exec_time)::numeric / 1000, 2)"
        " FROM pg_stat_statements WHERE query NOT ILIKE '%%pg_stat_statements%%'"
        " AND query NOT ILIKE 'VACUUM%%' AND query NOT ILIKE 'CHECKPOINT%%'"
        " GROUP BY 1 ORDER BY 3 DESC")
    return [{"statement": k, "calls": int(c), "seconds": float(s)} for k, c, s in rows]


def profile(server: BenchServer, data_dir: Path, rows: int,
            proposal: str | None = None) -> dict[str, Any]:
    """Profile one fresh import of ``rows`` rows; returns both splits and the run."""
    spy = VENV_BIN / "py-spy"
    if not spy.exists() and shutil.which("py-spy") is None:
        return {"skipped": "py-spy is not installed (pip install py-spy)"}
    path = generate.ensure(data_dir, "new", rows)
    schema = server.new_schema("prof")
    out = Path(tempfile.mkdtemp(prefix="nodes-import-prof-")) / "stacks.txt"
    server.query("SELECT pg_stat_statements_reset()")
    result: Result = import_once(
        server, schema, path, "fresh import under py-spy", rows, kind="profile",
        proposal=proposal,
        wrap=[str(spy if spy.exists() else "py-spy"), "record", "--idle", "--threads",
              "--nonblocking", "-f", "raw", "-r", str(SAMPLE_RATE), "-o", str(out), "--"])
    srv = server_split(server)
    server.drop_schema(schema)
    client = split(out)
    shutil.rmtree(out.parent, ignore_errors=True)
    return {"rows": rows, "proposal": proposal, "seconds": round(result.seconds, 2),
            "client": client,
            "server": srv, "result": result.as_dict()}


def format_profile(prof: dict[str, Any]) -> str:
    """The two splits as text."""
    if "skipped" in prof:
        return f"profile skipped: {prof['skipped']}"
    engine = f"engine + [{prof['proposal']}]" if prof.get("proposal") else "engine as it is"
    lines = [(f"profile of a fresh {prof['rows']:,}-row import, {engine} ({prof['seconds']} s "
              f"wall, under py-spy --nonblocking):")]
    for role, stages in prof["client"].items():
        n = stages.get("threads", 1)
        lines.append(f"  client {role} ({n} thread{'s' if n != 1 else ''}; seconds summed):")
        for stage, secs in stages.items():
            if stage != "threads":
                lines.append(f"    {stage:45} {secs:8.2f}")
    lines.append("  server, pg_stat_statements execution time:")
    for row in prof["server"]:
        lines.append(f"    {row['statement']:45} {row['seconds']:8.2f}  ({row['calls']} calls)")
    return "\n".join(lines)


def main() -> None:
    """Command line: profile one fresh import."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/nodes-import-bench"))
    parser.add_argument("--proposal", default=None,
                        choices=["lateral", "no-analyze", "lateral-no-analyze"])
    args = parser.parse_args()
    with BenchServer() as server:
        print(format_profile(profile(server, args.data_dir, args.rows, args.proposal)))


if __name__ == "__main__":
    main()
