"""The encoder's COPY text payload read by a real PostgreSQL: what arrives is what was read."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from nodes_import.pipeline import encode
from nodes_import.pipeline.parse import RawBatch
from nodes_import.store import connection
from tests.fixtures.postgres import Database

# Anything PostgreSQL can store: no NUL (rejected by the encoder), no lone surrogates.
texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
HEADER = ["reference_id", "type", "plain", 'we"ird\\key\t']


def _staged(db: Database, part: encode.EncodedPart) -> list[tuple[Any, ...]]:
    """COPY the payload into the writer's own staging table and read it back."""
    columns = encode.staged_columns(HEADER)
    with db.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT text)").format(
            sql.Identifier(connection.STAGE_TABLE),
            sql.SQL(", ").join(map(sql.Identifier, columns)))
        with cur.copy(statement) as copy:
            for piece in part.payload:
                copy.write(piece)
        return cur.execute(sql.SQL("SELECT row_number, reference_id, node_type, metadata FROM {}"
                                   " ORDER BY row_number").format(
            sql.Identifier(connection.STAGE_TABLE))).fetchall()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.tuples(texts.filter(lambda s: s.strip() != "" and len(s) <= 255),
                          st.one_of(st.none(), texts.filter(lambda s: len(s) <= 64)),
                          st.one_of(st.none(), texts), st.one_of(st.none(), texts)),
                min_size=1, max_size=25))
def test_any_row_reaches_the_staging_table_exactly(
        db: Database, rows: list[tuple[str, str | None, str | None, str | None]]) -> None:
    table = pa.table({name: pa.array([r[i] or None for r in rows], pa.string())
                      for i, name in enumerate(HEADER)})
    batch = RawBatch(table, pa.array(range(1, len(rows) + 1), pa.int64()))
    (part,) = encode.encode_batch(batch, HEADER, 1)
    assert part.rows == len(rows) and not part.rejected
    staged = _staged(db, part)
    expected = []
    for number, (ref, node_type, plain, weird) in enumerate(rows, 1):
        meta = {k: v for k, v in (("plain", plain), (HEADER[3], weird)) if v}
        expected.append((number, ref, node_type or None, meta))
    assert staged == expected
