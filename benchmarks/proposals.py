"""Question: would this change to the engine make imports faster (or safer)?

A proposal is a patch applied in memory to ``nodes_import`` before the command line
runs (``python -m benchmarks.proposals NAME ARGS...`` = ``nodes-import ARGS...`` with
NAME applied), so the benchmarks measure it against the engine as it is, in the same
run, without touching the package's files.

``lateral``: the upsert's lookup of the current rows (``cur``) as ``LEFT JOIN LATERAL
(... LIMIT 1)`` on ``nodes`` and on ``node_metadata``. Each staged key is then looked up
through the unique index (reference_id, group_id) and the node_metadata primary key,
whatever the planner believes about table sizes. With the plain joins the plan depends
on statistics: before commit accbe3d (ANALYZE of the staging table per batch) the
planner guessed 200 staged keys and ~20 rows of the group, chose a nested loop over a
sequential scan of ``nodes`` and one 25,000-row batch against 50,000 existing rows ran
> 60 s (0.7 s with ``lateral``); fresh imports timed out. With accbe3d the plan is
sane but still a scan of the group's rows per batch (see README for the figures).

``lateral`` was adopted by the engine in commit 0f61583; applied to that engine it
changes nothing.

``no-analyze`` (and ``lateral-no-analyze``): without accbe3d's per-batch ``ANALYZE`` of
the staging table, by skipping that one statement. With LATERAL lookups the ANALYZE no
longer decides the plan of the lookups (measured: -11% to -20% time, see README).
"""

from __future__ import annotations

import sys

from nodes_import.store import batchwrite, connection

_PLAIN_JOIN = """    LEFT JOIN nodes n ON n.reference_id = s.reference_id AND n.group_id = {group}
    LEFT JOIN node_metadata m ON m.node_id = n.id"""
_LATERAL_JOIN = """    LEFT JOIN LATERAL (
        SELECT n.id, n.type, n.domain_id FROM nodes n
        WHERE n.reference_id = s.reference_id AND n.group_id = {group} LIMIT 1) n ON true
    LEFT JOIN LATERAL (
        SELECT m.metadata FROM node_metadata m WHERE m.node_id = n.id LIMIT 1) m ON true"""


def lateral_upsert(upsert: str) -> str:
    """The engine's upsert with LATERAL index lookups; ValueError if it changed shape.

    Since commit 0f61583 the engine has them itself: then this returns it unchanged.
    """
    if "LEFT JOIN LATERAL" in upsert:
        return upsert
    if "LEFT JOIN LATERAL" in upsert:
        return upsert  # adopted by the engine (commit 0f61583): nothing to patch
    if _PLAIN_JOIN not in upsert:
        raise ValueError("batchwrite._UPSERT no longer has the plain joins this patch replaces")
    return upsert.replace(_PLAIN_JOIN, _LATERAL_JOIN)


def _skip_stage_analyze() -> None:
    """Drop the engine's per-batch ``ANALYZE nodes_import_stage`` (commit accbe3d)."""
    import psycopg

    execute = psycopg.Cursor.execute

    def patched(self: psycopg.Cursor, query: object, *args: object, **kwargs: object) -> object:
        text = query.as_string(self.connection) if hasattr(query, "as_string") else str(query)
        if text.startswith("ANALYZE") and connection.STAGE_TABLE in text:
            return self
        return execute(self, query, *args, **kwargs)  # type: ignore[arg-type]

    psycopg.Cursor.execute = patched  # type: ignore[method-assign,assignment]


def apply(name: str) -> None:
    """Patch the loaded engine with proposal ``name``."""
    if name not in PROPOSALS:
        raise SystemExit(f"unknown proposal {name!r}")
    if name in ("lateral", "lateral-no-analyze"):
        batchwrite._UPSERT = lateral_upsert(batchwrite._UPSERT)
    if name in ("no-analyze", "lateral-no-analyze"):
        _skip_stage_analyze()


PROPOSALS = {
    "none": "the engine as it is",
    "lateral": "upsert: LATERAL index lookups of the current rows (in the engine since 0f61583)",
    "no-analyze": "without the per-batch ANALYZE of the staging table",
    "lateral-no-analyze": "both",
}


def main() -> None:
    """``python -m benchmarks.proposals NAME ARGS...``: nodes-import ARGS with NAME applied."""
    name, args = sys.argv[1], sys.argv[2:]
    apply(name)
    from nodes_import.cli import main as cli_main

    sys.argv = ["nodes-import", *args]
    cli_main()


if __name__ == "__main__":
    main()
