"""Validate: which rows of a parsed batch will not be imported, and why.

``reject_mask`` finds them with Arrow kernels (no Python loop over rows): a blank
reference_id, a value longer than its column allows (nodes.reference_id VARCHAR(255),
nodes.type VARCHAR(64)) or than ``node.import.max-field-bytes``, a NUL byte (PostgreSQL
text cannot hold one). Only the rows it rejects, rare by definition, are then described one
by one (``rejected_rows``) for job_failures: their reason and their line.
"""

from __future__ import annotations

import csv
import functools
import io
from collections.abc import Collection
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from nodes_import.pipeline.parse import MAX_LINE_CHARS, REFERENCE_ID, TYPE, InvalidRow

# Column limits of the schema (nodes.reference_id VARCHAR(255), nodes.type and
# job_status.node_type VARCHAR(64), nodes.group_id and job_status.group_id VARCHAR(255)),
# declared here once: the Kafka message checks and the CLI import them.
MAX_REFERENCE_ID_CHARS = 255
MAX_TYPE_CHARS = 64
MAX_GROUP_ID_CHARS = 255

_TRUE, _FALSE = pa.scalar(True), pa.scalar(False)


@functools.lru_cache(maxsize=64)
def _lit(value: int) -> pa.Scalar:
    """An int64 constant made once (see ``encode._lit``: converting per call is slow)."""
    return pa.scalar(value, pa.int64())


@dataclass(frozen=True)
class Rejected:
    """A row that will not be imported, and why."""

    row_number: int
    reference_id: str | None
    reason: str
    line: str


def _too_long(column: pa.Array | pa.ChunkedArray, chars: int) -> pa.Array | None:
    """Values longer than ``chars`` characters, or None when none can be: a value of at
    most ``chars`` bytes has at most ``chars`` characters (one cheap max over lengths)."""
    if (pc.max(pc.binary_length(column)).as_py() or 0) <= chars:
        return None
    return pc.fill_null(pc.greater(pc.utf8_length(column), _lit(chars)), _FALSE)


def reject_mask(table: pa.Table, max_field_bytes: int, with_controls: Collection[str]) -> pa.Array:
    """True for each row to reject: blank reference_id, a value over its column's limit or
    over ``max_field_bytes``, a NUL byte (looked for only in ``with_controls``, the columns
    whose bytes include a control character)."""
    refs = table.column(REFERENCE_ID)
    # Blank: null, empty or only whitespace (utf8_is_space stops at the first other
    # character, far cheaper than trimming every value).
    bad = pc.or_(pc.fill_null(pc.equal(pc.binary_length(refs), _lit(0)), _TRUE),
                 pc.fill_null(pc.utf8_is_space(refs), _FALSE))
    checks = [(refs, MAX_REFERENCE_ID_CHARS)]
    if TYPE in table.column_names:
        checks.append((table.column(TYPE), MAX_TYPE_CHARS))
    for column, chars in checks:
        too_long = _too_long(column, chars)
        if too_long is not None:
            bad = pc.or_(bad, too_long)
    for name, column in zip(table.column_names, table.columns, strict=True):
        if name in with_controls:  # NUL is a control byte: test values only then
            bad = pc.or_(bad, pc.fill_null(pc.match_substring(column, "\x00"), _FALSE))
        if (pc.max(pc.binary_length(column)).as_py() or 0) > max_field_bytes:
            too_big = pc.greater(pc.binary_length(column), _lit(max_field_bytes))
            bad = pc.or_(bad, pc.fill_null(too_big, _FALSE))
    return bad.combine_chunks() if isinstance(bad, pa.ChunkedArray) else bad


def _describe(row: dict[str, str | None], max_field_bytes: int) -> str:
    ref = row.get(REFERENCE_ID)
    if ref is None or not ref.strip():
        return "blank reference_id"
    if len(ref) > MAX_REFERENCE_ID_CHARS:
        return f"reference_id longer than {MAX_REFERENCE_ID_CHARS} characters"
    node_type = row.get(TYPE)
    if node_type is not None and len(node_type) > MAX_TYPE_CHARS:
        return f"type longer than {MAX_TYPE_CHARS} characters"
    for name, value in row.items():
        if value is not None and "\x00" in value:
            return f"NUL byte in column {name!r}"
    for name, value in row.items():
        if value is not None and len(value.encode()) > max_field_bytes:
            return f"value in column {name!r} longer than {max_field_bytes} bytes"
    return "rejected"


def _as_line(values: list[str | None]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(["" if v is None else v for v in values])
    return out.getvalue().replace("\x00", "\\0")[:MAX_LINE_CHARS]


def rejected_rows(table: pa.Table, numbers: pa.Array, mask: pa.Array,
                  max_field_bytes: int) -> list[Rejected]:
    """The rows ``mask`` rejects, each with its reason and its line, for job_failures."""
    rows = table.filter(mask).to_pylist()
    nums = numbers.filter(mask).to_pylist()
    out = []
    for number, row in zip(nums, rows, strict=True):
        ref = row.get(REFERENCE_ID)
        shown = None if ref is None else ref.replace("\x00", "\\0")[:MAX_REFERENCE_ID_CHARS]
        out.append(Rejected(number, shown, _describe(row, max_field_bytes),
                            _as_line(list(row.values()))))
    return out


def from_invalid(rows: list[InvalidRow]) -> list[Rejected]:
    """The parser's invalid rows (wrong field count, not UTF-8) as rejected rows."""
    return [Rejected(r.row_number, None, r.reason, r.line.replace("\x00", "\\0")) for r in rows]
