"""Encode: a parsed batch -> validated, partitioned COPY payloads. Vectorised throughout.

Per batch, with pyarrow compute kernels only (no Python loop over rows):
1. reject rows that PostgreSQL would refuse or that make no node (blank reference_id,
   over-long values, NUL bytes), keeping their row numbers and reasons;
2. build each row's metadata as a JSON object text from the non-key columns;
3. split rows by a hash of reference_id into key partitions, so one key always goes
   to the same writer connection and "the last occurrence in the file wins" holds
   even with several batches in flight;
4. write each partition as CSV bytes for ``COPY ... (FORMAT csv)``.
Only rejected rows (rare by definition) are touched one by one, to describe them.
"""

from __future__ import annotations

import io
import csv
from dataclasses import dataclass

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from nodes_import.pipeline.parse import MAX_LINE_CHARS, REFERENCE_ID, TYPE, InvalidRow, RawBatch

# Column limits of the schema (nodes.reference_id VARCHAR(255), nodes.type VARCHAR(64)).
MAX_REFERENCE_ID_CHARS = 255
MAX_TYPE_CHARS = 64
# Knuth's multiplicative hash constant: spreads the key's last bytes over partitions.
_HASH_MULTIPLIER = pa.scalar(2654435761, pa.uint32())
# JSON escapes for control characters other than \n, \r, \t (NUL is rejected earlier).
_RARE_CONTROLS = [chr(c) for c in range(1, 32) if chr(c) not in "\n\r\t"]
_RARE_CONTROL_RE = "[\x01-\x08\x0b\x0c\x0e-\x1f]"
_CSV_WRITE = pacsv.WriteOptions(include_header=False, quoting_style="needed")


@dataclass(frozen=True)
class Rejected:
    """A row that will not be imported, and why."""

    row_number: int
    reference_id: str | None
    reason: str
    line: str


@dataclass
class EncodedPart:
    """One key partition of a batch, ready for COPY into the staging table."""

    partition: int
    payload: bytes  # CSV: row_number, reference_id[, node_type][, metadata]
    rows: int  # valid rows in the payload
    rejected: list[Rejected]
    last_row: int  # the highest data row number of this partition in this batch (0: none)


# Anything a JSON string literal must escape: one scan decides whether to escape at all.
_NEEDS_ESCAPE_RE = '["\\\\\x01-\x1f]'


def _json_string_body(values: pa.Array) -> pa.Array:
    """Escape string values for the inside of a JSON string literal."""
    if not pc.any(pc.match_substring_regex(values, _NEEDS_ESCAPE_RE)).as_py():
        return values  # the common case: plain text, five replace passes saved
    out = pc.replace_substring(values, "\\", "\\\\")
    out = pc.replace_substring(out, '"', '\\"')
    out = pc.replace_substring(out, "\n", "\\n")
    out = pc.replace_substring(out, "\r", "\\r")
    out = pc.replace_substring(out, "\t", "\\t")
    if pc.any(pc.match_substring_regex(out, _RARE_CONTROL_RE)).as_py():
        for char in _RARE_CONTROLS:
            out = pc.replace_substring(out, char, f"\\u{ord(char):04x}")
    return out


def metadata_json(table: pa.Table, keys: list[str]) -> pa.Array:
    """Each row's metadata columns as one JSON object text; empty cells are left out."""
    if not keys:
        return pa.nulls(table.num_rows, pa.string())
    pieces = []
    for key in keys:
        prefix = orjson.dumps(key).decode() + ':"'
        column = table.column(key).combine_chunks()
        # The parser already reads empty cells as nulls; this keeps other producers honest.
        column = pc.if_else(pc.equal(column, ""), pa.scalar(None, pa.string()), column)
        body = _json_string_body(column)
        pieces.append(pc.binary_join_element_wise(prefix, body, '"', ""))
    # The leading "{" is a scalar on purpose: pyarrow's skip-nulls join drops the rows
    # where every input is null (observed with pyarrow 26) unless one input never is.
    joined = pc.binary_join_element_wise("{", *pieces, ",", null_handling="skip")
    joined = pc.replace_substring(joined, "{,", "{", max_replacements=1)
    return pc.binary_join_element_wise(joined, "}", "")


def _partition_of(refs: pa.Array, partitions: int) -> pa.Array:
    """A stable partition number per key: a multiplicative hash of its last 4 bytes."""
    padded = pc.utf8_lpad(pc.fill_null(refs, ""), width=4, padding="0")
    tail = pc.cast(pc.binary_slice(pc.cast(padded, pa.binary()), -4), pa.binary(4))
    hashed = pc.shift_right(pc.multiply(tail.view(pa.uint32()), _HASH_MULTIPLIER), 16)
    return pc.modulo(hashed, partitions)


def _reject_mask(table: pa.Table, max_field_bytes: int) -> pa.Array:
    refs = table.column(REFERENCE_ID)
    bad = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(refs)), 0), True)
    bad = pc.or_(bad, pc.fill_null(pc.greater(pc.utf8_length(refs), MAX_REFERENCE_ID_CHARS), False))
    if TYPE in table.column_names:
        too_long = pc.greater(pc.utf8_length(table.column(TYPE)), MAX_TYPE_CHARS)
        bad = pc.or_(bad, pc.fill_null(too_long, False))
    for column in table.columns:
        bad = pc.or_(bad, pc.fill_null(pc.match_substring(column, "\x00"), False))
        too_big = pc.greater(pc.binary_length(column), max_field_bytes)
        bad = pc.or_(bad, pc.fill_null(too_big, False))
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


def _rejected_rows(table: pa.Table, numbers: pa.Array, mask: pa.Array,
                   max_field_bytes: int) -> list[Rejected]:
    rows = table.filter(mask).to_pylist()
    nums = numbers.filter(mask).to_pylist()
    out = []
    for number, row in zip(nums, rows):
        ref = row.get(REFERENCE_ID)
        out.append(Rejected(number, None if ref is None else ref.replace("\x00", "\\0")[:255],
                            _describe(row, max_field_bytes), _as_line(list(row.values()))))
    return out


def _from_invalid(rows: list[InvalidRow]) -> list[Rejected]:
    return [Rejected(r.row_number, None, r.reason, r.line.replace("\x00", "\\0")) for r in rows]


def _to_csv(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pacsv.write_csv(table, sink, write_options=_CSV_WRITE)
    return sink.getvalue().to_pybytes()


def staged_columns(header: list[str]) -> list[str]:
    """The staging-table columns a file with this header fills, in COPY order."""
    columns = ["row_number", "reference_id"]
    if TYPE in header:
        columns.append("node_type")
    if metadata_keys(header):
        columns.append("metadata")
    return columns


def metadata_keys(header: list[str]) -> list[str]:
    """Every column other than reference_id and type becomes a metadata key."""
    return [name for name in header if name not in (REFERENCE_ID, TYPE)]


def encode_batch(batch: RawBatch, header: list[str], partitions: int,
                 skip_through: list[int] | None = None,
                 max_field_bytes: int = 1 << 20) -> list[EncodedPart]:
    """Validate, partition and encode one batch; one ``EncodedPart`` per partition.

    ``skip_through[p]`` drops rows of partition ``p`` numbered at or below it (a resumed
    job's checkpoint).
    """
    table, numbers = batch.table, batch.row_numbers
    part = (_partition_of(table.column(REFERENCE_ID).combine_chunks(), partitions)
            if partitions > 1 else None)
    if skip_through is not None and any(skip_through):
        keep = None
        for p, through in enumerate(skip_through):
            in_part = pc.equal(part, p) if part is not None else pa.scalar(True)
            cond = pc.and_(in_part, pc.greater(numbers, through))
            keep = cond if keep is None else pc.or_(keep, cond)
        if keep is not None and isinstance(keep, pa.Array):
            table, numbers = table.filter(keep), numbers.filter(keep)
            part = part.filter(keep) if part is not None else None
    mask = _reject_mask(table, max_field_bytes)
    any_bad = pc.any(mask).as_py() or False
    rejected = _rejected_rows(table, numbers, mask, max_field_bytes) if any_bad else []
    rejected_parts = (part.filter(mask).to_pylist() if any_bad and part is not None
                      else [0] * len(rejected))
    invalid = _from_invalid(batch.invalid)
    if skip_through is not None:
        invalid = [r for r in invalid if r.row_number > skip_through[0]]
    if any_bad:
        good = pc.invert(mask)
        table, numbers = table.filter(good), numbers.filter(good)
        part = part.filter(good) if part is not None else None
    columns: dict[str, pa.Array] = {"row_number": numbers,
                                    "reference_id": table.column(REFERENCE_ID)}
    if TYPE in header:
        columns["node_type"] = table.column(TYPE)
    keys = metadata_keys(header)
    if keys:
        columns["metadata"] = metadata_json(table, keys)
    staged = pa.table(columns)
    parts = []
    for p in range(partitions):
        if part is None:
            rows, part_rejected = staged, rejected + invalid
        else:
            rows = staged.filter(pc.equal(part, p))
            part_rejected = [r for r, rp in zip(rejected, rejected_parts) if rp == p]
            if p == 0:
                part_rejected += invalid
        numbers_p = [r.row_number for r in part_rejected]
        last = max([pc.max(rows.column("row_number")).as_py() or 0] + numbers_p)
        parts.append(EncodedPart(p, _to_csv(rows) if rows.num_rows else b"",
                                 rows.num_rows, part_rejected, last))
    return parts
