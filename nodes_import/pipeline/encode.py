"""Encode: a parsed batch -> validated, partitioned COPY payloads. Vectorised throughout.

Per batch, with pyarrow compute kernels only (no Python loop over rows):
1. set aside the rows PostgreSQL would refuse or that make no node (``validate``: blank
   reference_id, over-long values, NUL bytes), keeping their row numbers and reasons;
2. split rows by a hash of reference_id into key partitions, so one key always goes
   to the same writer connection and "the last occurrence in the file wins" holds
   even with several batches in flight;
3. write each partition as ``COPY ... FROM STDIN`` text-format lines
   (``row_number TAB reference_id [TAB type] [TAB metadata JSON] LF``), each row's
   metadata a JSON object built from the non-key columns.
Step 3 is one ``binary_join_element_wise`` over the columns and the constant JSON
fragments between them when no value needs escaping and no cell is empty (the common
case, checked per column with a scan of its bytes); only the columns that do need it
pay for escaping, only batches with empty cells for dropping keys. Text format rather
than CSV: CSV would double every quote of the JSON (a third more bytes to send and
parse) and needs a CSV writer pass; text format needs escaping only for backslash, tab,
LF and CR, which JSON already escapes inside its strings.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from nodes_import.pipeline.parse import REFERENCE_ID, TYPE, RawBatch
from nodes_import.pipeline.validate import Rejected, from_invalid, reject_mask, rejected_rows

# Knuth's multiplicative hash constant: spreads the key's last bytes over partitions.
_HASH_MULTIPLIER = pa.scalar(2654435761, pa.uint32())
# JSON escapes for control characters other than \n, \r, \t (NUL is rejected earlier).
_RARE_CONTROLS = [chr(c) for c in range(1, 32) if chr(c) not in "\n\r\t"]
_RARE_CONTROL_RE = "[\x01-\x08\x0b\x0c\x0e-\x1f]"
# COPY text format: what a value's text must escape, and how NULL is spelled.
_COPY_ESCAPES = (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r"))
COPY_NULL = "\\N"


@functools.lru_cache(maxsize=1024)
def _lit(value: str | int) -> pa.Scalar:
    """A constant as an Arrow scalar, made once: a Python str or int handed to a compute
    function is converted on every call, and that conversion tries to import optional
    modules (decimal, dateutil) each time: ~0.15 ms a call, 0.1 s per 1M rows."""
    return pa.scalar(value, pa.string() if isinstance(value, str) else pa.int64())




def _join(*pieces: pa.Array | pa.ChunkedArray | str, skip_nulls: bool = False) -> pa.Array:
    """``binary_join_element_wise`` of arrays and constants; the last piece is the separator."""
    args = [_lit(p) if isinstance(p, str) else p for p in pieces]
    return pc.binary_join_element_wise(*args, null_handling="skip" if skip_nulls else "emit_null")


@dataclass
class EncodedPart:
    """One key partition of a batch, ready for COPY into the staging table."""

    partition: int
    # COPY text lines (row_number, reference_id[, node_type][, metadata]) as views of the
    # Arrow buffers they were joined into: sent as they are, never copied on the client.
    payload: tuple[memoryview, ...]
    rows: int  # valid rows in the payload
    rejected: list[Rejected]
    last_row: int  # the highest data row number of this partition in this batch (0: none)

    @property
    def payload_bytes(self) -> bytes:
        """The payload as one bytes object (a copy: for failure paths and tests)."""
        return b"".join(self.payload)


@dataclass(frozen=True)
class _Scan:
    """What a string column's bytes contain, from one pass over its value buffer(s)."""

    controls: bool  # any byte < 0x20: NUL, tab, LF, CR, other control characters
    quote: bool
    backslash: bool

    @property
    def json_clean(self) -> bool:
        """Nothing a JSON string (or COPY text) would have to escape."""
        return not (self.controls or self.quote or self.backslash)

    @property
    def copy_clean(self) -> bool:
        """Nothing COPY text format would have to escape."""
        return not (self.controls or self.backslash)


def _value_buffers(column: pa.Array | pa.ChunkedArray) -> Iterator[pa.Buffer]:
    """The non-empty value buffers of a string column's chunks. A sliced array's buffer
    may hold bytes outside the slice: a scan of it can only claim an escape is needed (or
    a control byte is there) when none is."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    for chunk in chunks:
        if len(chunk) == chunk.null_count:
            continue
        data = chunk.buffers()[2]
        if data is not None and data.size:
            yield data


def _smallest_byte(data: pa.Buffer) -> int:
    return int(pc.min(pa.Array.from_buffers(pa.uint8(), data.size, [None, data])).as_py())


def _scan(column: pa.Array | pa.ChunkedArray) -> _Scan:
    """Scan a column's raw value bytes: a min over them and two memchr searches, ~0.2 ms
    for 35k values where a per-value regex takes ~5 ms."""
    controls = quote = backslash = False
    for data in _value_buffers(column):
        raw = data.to_pybytes()
        controls = controls or _smallest_byte(data) < 0x20
        quote = quote or raw.find(b'"') >= 0
        backslash = backslash or raw.find(b"\\") >= 0
    return _Scan(controls, quote, backslash)


def _has_controls(column: pa.Array | pa.ChunkedArray) -> bool:
    """``_scan(column).controls`` alone: the min over the bytes, without the copy and the
    two searches only the encoding needs (the dry run's checks: 0.1-0.2 s of CPU per 5M
    rows of 6 columns)."""
    return any(_smallest_byte(data) < 0x20 for data in _value_buffers(column))


def _json_string_body(values: pa.Array | pa.ChunkedArray,
                      scan: _Scan) -> pa.Array | pa.ChunkedArray:
    """Escape string values for the inside of a JSON string literal (``scan``: theirs)."""
    if scan.json_clean:
        return values  # the common case: plain text, five replace passes saved
    out = values
    if scan.backslash:
        out = pc.replace_substring(out, "\\", "\\\\")
    if scan.quote:
        out = pc.replace_substring(out, '"', '\\"')
    if scan.controls:
        out = pc.replace_substring(out, "\n", "\\n")
        out = pc.replace_substring(out, "\r", "\\r")
        out = pc.replace_substring(out, "\t", "\\t")
        if pc.any(pc.match_substring_regex(out, _RARE_CONTROL_RE)).as_py():
            for char in _RARE_CONTROLS:
                out = pc.replace_substring(out, char, f"\\u{ord(char):04x}")
    return out


def _copy_text(values: pa.Array | pa.ChunkedArray,
               scan: _Scan) -> pa.Array | pa.ChunkedArray:
    """Escape values for a COPY text-format field (nulls stay null; ``scan``: theirs)."""
    if scan.copy_clean:
        return values
    out = values
    for char, escaped in _COPY_ESCAPES:
        out = pc.replace_substring(out, char, escaped)
    return out


def _json_key(key: str, copy_text: bool) -> str:
    """A metadata key as a JSON string literal (escaped for COPY text: ``copy_text``)."""
    text = orjson.dumps(key).decode()  # JSON escapes controls, so only "\\" remains
    return text.replace("\\", "\\\\") if copy_text else text


def _json_values(table: pa.Table, keys: list[str], copy_text: bool,
                 scans: dict[str, _Scan] | None = None) -> list[pa.Array | pa.ChunkedArray]:
    """Each metadata column escaped for a JSON string (and then for COPY text)."""
    out = []
    for key in keys:
        column = table.column(key)
        if column.type != pa.string():  # an all-null column built by hand
            column = column.cast(pa.string())
        if pc.min(pc.binary_length(column)).as_py() == 0:
            # The parser reads empty cells as nulls; this keeps other producers honest.
            column = pc.if_else(pc.equal(column, _lit("")), pa.scalar(None, pa.string()), column)
        scan = scans[key] if scans else _scan(column)
        body = _json_string_body(column, scan)
        if copy_text and not scan.json_clean:  # JSON escaping wrote backslashes
            body = pc.replace_substring(body, "\\", "\\\\")
        out.append(body)
    return out


def _metadata_pieces(table: pa.Table, keys: list[str], copy_text: bool,
                     scans: dict[str, _Scan] | None = None
                     ) -> list[pa.Array | pa.ChunkedArray | str]:
    """The metadata JSON of each row as join inputs: ``{"k":"v",...}`` with empty cells
    (nulls; the parser reads empty cells as null) left out."""
    values = _json_values(table, keys, copy_text, scans)
    if not any(v.null_count for v in values):
        # No key to drop: the constant fragments between the values, one join.
        pieces: list[pa.Array | pa.ChunkedArray | str] = []
        for n, (key, value) in enumerate(zip(keys, values, strict=True)):
            pieces += [("{" if n == 0 else '",') + _json_key(key, copy_text) + ':"', value]
        return [*pieces, '"}']
    members = [_join(_json_key(key, copy_text) + ':"', value, '"', "")
               for key, value in zip(keys, values, strict=True)]
    # The leading "{" is a scalar on purpose: pyarrow's skip-nulls join drops the rows
    # where every input is null (observed with pyarrow 26) unless one input never is.
    joined = _join("{", *members, ",", skip_nulls=True)
    return [pc.replace_substring(joined, "{,", "{", max_replacements=1), "}"]


def metadata_json(table: pa.Table, keys: list[str]) -> pa.Array | pa.ChunkedArray:
    """Each row's metadata columns as one JSON object text; empty cells are left out."""
    if not keys:
        return pa.nulls(table.num_rows, pa.string())
    return _join(*_metadata_pieces(table, keys, copy_text=False), "")


# A string array's offsets are 32-bit: one join's output must stay under 2 GiB. Rows
# are joined in slices of at most this many (estimated) bytes; only huge cells get there.
MAX_JOIN_BYTES = 1 << 30


def _copy_lines(numbers: pa.Array, table: pa.Table, header: list[str], keys: list[str],
                scans: dict[str, _Scan]) -> pa.Array | pa.ChunkedArray:
    """The COPY text line of each row (newline included): one join of every field and
    separator, chunked only when the text would pass ``MAX_JOIN_BYTES``."""
    # Escaping at most doubles a value; keys, quotes and separators add per row.
    estimate = 2 * table.nbytes + table.num_rows * (32 + sum(len(k) + 8 for k in keys))
    if estimate > MAX_JOIN_BYTES and table.num_rows > 1:
        half = table.num_rows // 2
        halves = [_copy_lines(numbers.slice(a, b), table.slice(a, b), header, keys, scans)
                  for a, b in ((0, half), (half, table.num_rows - half))]
        return pa.chunked_array([c for h in halves
                                 for c in (h.chunks if isinstance(h, pa.ChunkedArray) else [h])])
    pieces: list[pa.Array | pa.ChunkedArray | str] = [
        pc.cast(numbers, pa.string()), "\t",
        _copy_text(table.column(REFERENCE_ID), scans[REFERENCE_ID])]
    if TYPE in header:
        pieces += ["\t", pc.fill_null(_copy_text(table.column(TYPE), scans[TYPE]),
                                      _lit(COPY_NULL))]
    if keys:
        pieces += ["\t", *_metadata_pieces(table, keys, copy_text=True, scans=scans)]
    pieces.append("\n")
    return _join(*pieces, "")


def _payload(lines: pa.Array | pa.ChunkedArray) -> tuple[memoryview, ...]:
    """The lines' bytes as they lie in Arrow's buffers: one view per chunk, no copy."""
    out = []
    for chunk in (lines.chunks if isinstance(lines, pa.ChunkedArray) else [lines]):
        if len(chunk):
            offsets = pa.Array.from_buffers(pa.int32(), len(chunk) + 1,
                                            [None, chunk.buffers()[1]], offset=chunk.offset)
            start, end = offsets[0].as_py(), offsets[-1].as_py()
            out.append(memoryview(chunk.buffers()[2].slice(start, end - start)))
    return tuple(out)


def _unescape(field: str) -> str | None:
    if field == COPY_NULL:
        return None
    out, chars = [], iter(field)
    for char in chars:
        if char == "\\":
            nxt = next(chars, "")
            out.append({"t": "\t", "n": "\n", "r": "\r"}.get(nxt, nxt))
        else:
            out.append(char)
    return "".join(out)


def payload_rows(part: EncodedPart) -> list[tuple[int, str]]:
    """(row_number, reference_id) of every row in a payload. For the failure path only
    (a partition the database kept refusing): a Python loop over one batch at most."""
    rows = []
    for line in part.payload_bytes.decode().split("\n"):
        if line:
            number, ref = line.split("\t", 2)[:2]
            rows.append((int(number), _unescape(ref) or ""))
    return rows


def partition_of(refs: pa.Array, partitions: int) -> pa.Array:
    """A stable partition number per key: a multiplicative hash of its last 4 bytes."""
    refs = pc.fill_null(refs, "")
    # Padding only changes the last 4 bytes of a key shorter than 4 bytes: skipped (one
    # pass over every key) when there is none, which is nearly always.
    if (pc.min(pc.binary_length(refs)).as_py() or 0) < 4:
        refs = pc.utf8_lpad(refs, width=4, padding="0")
    tail = pc.cast(pc.binary_slice(pc.cast(refs, pa.binary()), -4), pa.binary(4))
    hashed = pc.shift_right(pc.multiply(tail.view(pa.uint32()), _HASH_MULTIPLIER), 16)
    return pc.modulo(hashed, partitions)


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


@dataclass(frozen=True)
class Validated:
    """What ``validate_batch`` found: the keys of the rows import would write, and the rows
    it would reject (the parser's invalid rows too), by row number."""

    keys: pa.Array  # reference_id of each valid row
    rejected: list[Rejected]


def validate_batch(batch: RawBatch, max_field_bytes: int = 1 << 20) -> Validated:
    """The checks of ``encode_batch`` without the encoding (``import --dry-run``): the same
    scans, the same ``reject_mask`` and reasons, nothing built for COPY."""
    table, numbers = batch.table, batch.row_numbers
    controls = {name for name, column in zip(table.column_names, table.columns, strict=True)
                if _has_controls(column)}
    mask = reject_mask(table, max_field_bytes, controls)
    keys = table.column(REFERENCE_ID).combine_chunks()
    rejected = from_invalid(batch.invalid)
    if pc.any(mask).as_py():
        rejected += rejected_rows(table, numbers, mask, max_field_bytes)
        keys = keys.filter(pc.invert(mask))
    return Validated(keys, sorted(rejected, key=lambda r: r.row_number))


def encode_batch(batch: RawBatch, header: list[str], partitions: int,
                 skip_through: list[int] | None = None,
                 max_field_bytes: int = 1 << 20) -> list[EncodedPart]:
    """Validate, partition and encode one batch; one ``EncodedPart`` per partition.

    ``skip_through[p]`` drops rows of partition ``p`` numbered at or below it (a resumed
    job's checkpoint).
    """
    table, numbers = batch.table, batch.row_numbers
    part = (partition_of(table.column(REFERENCE_ID).combine_chunks(), partitions)
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
    # One scan of each column's bytes for the whole batch (see _copy_lines).
    scans = {name: _scan(column)
             for name, column in zip(table.column_names, table.columns, strict=True)}
    mask = reject_mask(table, max_field_bytes,
                       {name for name, scan in scans.items() if scan.controls})
    any_bad = pc.any(mask).as_py() or False
    rejected = rejected_rows(table, numbers, mask, max_field_bytes) if any_bad else []
    rejected_parts = (part.filter(mask).to_pylist() if any_bad and part is not None
                      else [0] * len(rejected))
    invalid = from_invalid(batch.invalid)
    if skip_through is not None:
        invalid = [r for r in invalid if r.row_number > skip_through[0]]
    if any_bad:
        good = pc.invert(mask)
        table, numbers = table.filter(good), numbers.filter(good)
        part = part.filter(good) if part is not None else None
    # The whole batch's lines first, then split by partition: filtering the one column of
    # lines costs about half of filtering every input column (callgrind: 7.5% fewer
    # instructions in encode_batch).
    lines = (_copy_lines(numbers, table, header, metadata_keys(header), scans) if table.num_rows
             else pa.array([], pa.string()))
    parts = []
    for p in range(partitions):
        if part is None:
            rows, rows_numbers, part_rejected = lines, numbers, rejected + invalid
        else:
            in_part = pc.equal(part, _lit(p))
            rows, rows_numbers = lines.filter(in_part), numbers.filter(in_part)
            part_rejected = [r for r, rp in zip(rejected, rejected_parts, strict=True) if rp == p]
            if p == 0:
                part_rejected += invalid
        numbers_p = [r.row_number for r in part_rejected]
        last = max([pc.max(rows_numbers).as_py() or 0, *numbers_p])
        parts.append(EncodedPart(p, _payload(rows), len(rows), part_rejected, last))
    return parts
