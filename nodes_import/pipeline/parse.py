"""Parse: a decompressed stream (or a list of IDs) -> Arrow batches of string columns.

Every column is read as a string, exactly as written (no trimming, no type guessing);
empty cells are nulls. Each batch carries the data row numbers of its rows (1 = the
first row after the header) so rejected rows can be reported and a resumed job can skip
what it already committed. Rows with the wrong number of fields, and rows with a value that
is not UTF-8, come back as ``InvalidRow`` with their text, in order, never as an exception.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from nodes_import.errors import SourceError
from nodes_import.pipeline.source import CountingStream, Source

REFERENCE_ID = "reference_id"
TYPE = "type"
# Longest stored excerpt of a rejected line: job_failures is for reading, not archiving.
MAX_LINE_CHARS = 4096
# Above this many wrong-width rows in one batch, number rows in Python instead of
# one vector pass per bad row (only pathological files get here).
_VECTOR_SHIFT_LIMIT = 32


@dataclass(frozen=True)
class InvalidRow:
    """A row the parser could not split into the header's columns, or not decode as UTF-8."""

    row_number: int
    line: str
    reason: str


@dataclass
class RawBatch:
    """Up to ``batch_size`` parsed rows: string columns by header name."""

    table: pa.Table
    row_numbers: pa.Array  # int64, ascending
    invalid: list[InvalidRow] = field(default_factory=list)
    bytes_read: int = 0  # compressed bytes read from the source so far


class _RowNumbers:
    """Assigns data row numbers to valid rows, skipping the numbers of invalid ones."""

    def __init__(self, capacity: int) -> None:
        self._arange = pa.array(range(capacity), pa.int64())
        self._next = 1
        self.pending: list[InvalidRow] = []

    def take(self, count: int) -> tuple[pa.Array, list[InvalidRow]]:
        start = self._next
        self.pending.sort(key=lambda r: r.row_number)
        numbers: pa.Array = pc.add(self._arange.slice(0, count), start)
        last = start + count - 1
        taken: list[InvalidRow] = []
        if self.pending and count:
            if len(self.pending) > _VECTOR_SHIFT_LIMIT:
                numbers, taken = self._take_slow(start, count)
                # The batch ends at its last valid row (a row number the slow path
                # skipped for an invalid row lies before it): the next batch starts after.
                last = int(numbers[-1].as_py())
            else:
                for bad in self.pending:
                    if bad.row_number < start:  # number unknown or already passed
                        taken.append(bad)
                        continue
                    if bad.row_number > last:
                        break
                    after = pc.greater_equal(numbers, bad.row_number)
                    numbers = pc.add(numbers, pc.cast(after, pa.int64()))
                    last += 1
                    taken.append(bad)
        elif self.pending:
            taken = [bad for bad in self.pending if bad.row_number < start]
        self.pending = self.pending[len(taken):]
        self._next = last + 1 if count else start
        return numbers, taken

    def _take_slow(self, start: int, count: int) -> tuple[pa.Array, list[InvalidRow]]:
        bad = {row.row_number for row in self.pending}
        numbers: list[int] = []
        row = start
        while len(numbers) < count:
            if row not in bad:
                numbers.append(row)
            row += 1
        last = numbers[-1]
        taken = [r for r in self.pending if r.row_number <= last]
        return pa.array(numbers, pa.int64()), taken

    def flush(self) -> list[InvalidRow]:
        rest, self.pending = self.pending, []
        return sorted(rest, key=lambda r: r.row_number)


def _invalid_handler(sink: list[InvalidRow], header_lines: int = 1) -> Callable[[Any], str]:
    """Records each row Arrow cannot split into the header's columns; Arrow numbers lines
    from 1 with the header line counted, data rows are numbered after ``header_lines``."""
    def handle(row: Any) -> str:
        number = (row.number - header_lines if row.number is not None and row.number > 0
                  else -1)
        reason = f"expected {row.expected_columns} fields, got {row.actual_columns}"
        try:
            text = row.text or ""
        except UnicodeDecodeError:  # pyarrow decodes the line for us, and may fail
            text = "<line is not valid UTF-8>"
        sink.append(InvalidRow(number, text[:MAX_LINE_CHARS], reason))
        return "skip"

    return handle


def _rebatch(reader: Iterator[pa.RecordBatch], size: int) -> Iterator[pa.Table]:
    """Gather read blocks into tables of exactly ``size`` rows (the last one smaller).

    Blocks stay small (pyarrow reads several ahead, so the block size sets the reader's
    memory) while batches stay large (the database prefers big transactions).
    """
    pending: list[pa.RecordBatch] = []
    rows = 0
    for batch in reader:
        pending.append(batch)
        rows += batch.num_rows
        while rows >= size:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, size)
            rest = table.slice(size)
            pending, rows = rest.to_batches(), rest.num_rows
    if rows:
        yield pa.Table.from_batches(pending)


class CsvReader:
    """Streams a CSV source as ``RawBatch`` es; the header is read first, from its own open."""

    def __init__(self, source: Source, *, block_size: int, batch_size: int,
                 max_columns: int = 1000) -> None:
        self._source = source
        self._block_size = block_size
        self._batch_size = batch_size
        self._max_columns = max_columns
        self.header = self._read_header()

    def _options(self, sink: list[InvalidRow], types: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "read_options": pacsv.ReadOptions(use_threads=False, block_size=self._block_size),
            "parse_options": pacsv.ParseOptions(
                newlines_in_values=True, invalid_row_handler=_invalid_handler(sink)
            ),
            "convert_options": pacsv.ConvertOptions(
                column_types=types,
                strings_can_be_null=True,
                quoted_strings_can_be_null=True,
                null_values=[""],
                check_utf8=True,
            ),
        }

    def _open(self, stream: CountingStream, sink: list[InvalidRow],
              types: dict[str, Any] | None) -> pacsv.CSVStreamingReader:
        try:
            return pacsv.open_csv(pa.PythonFile(stream, mode="r"), **self._options(sink, types))
        except SourceError:
            raise
        except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
            raise _read_error("the CSV", exc, utf8_retry=types is not None) from exc

    def _read_header(self) -> list[str]:
        stream = self._source.open()
        try:
            names = list(self._open(stream, [], None).schema.names)
        except UnicodeDecodeError as exc:
            raise SourceError("cannot read the CSV: the header is not valid UTF-8") from exc
        finally:
            stream.close()
        if len(names) > self._max_columns:
            raise SourceError(f"the CSV has {len(names)} columns, over "
                              f"node.import.max-columns ({self._max_columns})")
        if REFERENCE_ID not in names:
            raise SourceError(f"the CSV has no {REFERENCE_ID!r} column (header: {names[:20]})")
        if "" in names:
            position = names.index("") + 1
            raise SourceError(f"the CSV header has an empty column name at position {position}")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise SourceError(f"the CSV header repeats column name(s): {', '.join(duplicates)}")
        return names

    def batches(self) -> Iterator[RawBatch]:
        """Yield every row once, in file order, in batches of at most ``batch_size``."""
        return _utf8_fallback(self._batches)

    def _batches(self, as_text: bool) -> Iterator[RawBatch]:
        invalid: list[InvalidRow] = []
        stream = self._source.open()
        try:
            kind = pa.string() if as_text else pa.binary()
            reader = self._open(stream, invalid, {name: kind for name in self.header})
            yield from _numbered(reader, invalid, self.header, self._batch_size, stream, as_text,
                                 "the CSV")
        finally:
            stream.close()


class _NotUtf8(SourceError):
    """Arrow refused a block that is not UTF-8 (text mode): read the file as binary."""


def _utf8_fallback(batches: Callable[[bool], Iterator[RawBatch]]) -> Iterator[RawBatch]:
    """``batches(True)`` (strings, Arrow checks UTF-8: the fast path); if a value is not
    UTF-8, Arrow fails its whole block, so the file is read again from the start as binary
    (``batches(False)``, each batch validated by ``_as_text``, its bad rows rejected) and
    the batches already yielded are skipped: both reads cut the same batches."""
    yielded = 0
    try:
        for batch in batches(True):
            yield batch
            yielded += 1
        return
    except _NotUtf8:
        pass
    for n, batch in enumerate(batches(False)):
        if n >= yielded:
            yield batch


def _numbered(reader: pacsv.CSVStreamingReader, invalid: list[InvalidRow], columns: list[str],
              batch_size: int, stream: CountingStream, as_text: bool,
              what: str) -> Iterator[RawBatch]:
    """The reader's rows in batches, numbered, with the invalid rows reported in order.

    ``invalid`` is the list the reader's invalid-row handler appends to while it parses.
    Binary columns (``as_text`` false) are validated and turned into strings here. ``what``
    names the file in a read error ("the CSV", "the ID file").
    """
    numbers = _RowNumbers(batch_size)
    for table in _rebatch(_guarded(reader, what), batch_size):
        numbers.pending.extend(invalid)
        invalid.clear()
        row_numbers, bad = numbers.take(table.num_rows)
        not_text: list[InvalidRow] = []
        if not as_text:
            table, row_numbers, not_text = _as_text(table, row_numbers)
        if not_text:
            bad = sorted(bad + not_text, key=lambda r: r.row_number)
        yield RawBatch(table, row_numbers, bad, stream.compressed_bytes)
    numbers.pending.extend(invalid)
    rest = numbers.flush()
    if rest:  # invalid rows after the last valid one
        empty = pa.table({name: pa.array([], pa.string()) for name in columns})
        yield RawBatch(empty, pa.array([], pa.int64()), rest, stream.compressed_bytes)


# A batch with more rows than this that are not UTF-8 records them without their text.
MAX_INVALID_LINES = 1000


def _as_text(table: pa.Table, numbers: pa.Array) -> tuple[pa.Table, pa.Array, list[InvalidRow]]:
    """The binary columns as strings, and the rows whose bytes are not UTF-8 as invalid.

    One zero-copy validation per column (what Arrow's ``check_utf8`` costs); only a column
    that fails it is looked at value by value, to name its bad rows.
    """
    schema = pa.schema([(name, pa.string()) for name in table.column_names])
    bad_columns = [name for name, column in zip(table.column_names, table.columns, strict=True)
                   if not _valid_utf8(column)]
    if not bad_columns:
        return _viewed(table, schema), numbers, []
    bad: dict[int, str] = {}  # row index -> the first column whose value is not UTF-8
    for name in bad_columns:
        column = table.column(name)
        for index, value in enumerate(column.to_pylist()):  # rare path: a bad batch only
            if value is not None and index not in bad and not _is_utf8(value):
                bad[index] = name
    indices = sorted(bad)
    # Only the bad rows are turned into Python values, for their text.
    lines = ([_line(row) for row in table.take(indices).to_pylist()]
             if len(indices) <= MAX_INVALID_LINES else [""] * len(indices))
    invalid = [InvalidRow(number, line, f"invalid UTF-8 in column {bad[index]!r}")
               for index, number, line in zip(indices, numbers.take(indices).to_pylist(),
                                              lines, strict=True)]
    keep = pa.array([index not in bad for index in range(table.num_rows)])
    return _viewed(table.filter(keep), schema), numbers.filter(keep), invalid


def _valid_utf8(column: pa.ChunkedArray) -> bool:
    """Every value of a binary column is UTF-8: a full validation of its string view (no
    copy; a cast to string costs more, measured)."""
    try:
        for chunk in column.chunks:
            chunk.view(pa.string()).validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _viewed(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """The same buffers seen as strings (validated before)."""
    return pa.Table.from_arrays(
        [pa.chunked_array([c.view(pa.string()) for c in col.chunks], pa.string())
         for col in table.columns], schema=schema)


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _line(row: dict[str, bytes | None]) -> str:
    """A rejected row's fields as text (bytes that are not UTF-8 shown as U+FFFD)."""
    text = ",".join("" if v is None else v.decode("utf-8", "replace") for v in row.values())
    return text.replace("\x00", "\\0")[:MAX_LINE_CHARS]


def _guarded(reader: pacsv.CSVStreamingReader, what: str) -> Iterator[pa.RecordBatch]:
    """The reader's blocks, with Arrow's read errors turned into ``SourceError`` naming
    ``what`` is read."""
    while True:
        try:
            yield reader.read_next_batch()
        except StopIteration:
            return
        except SourceError:
            raise
        except (pa.ArrowInvalid, OSError) as exc:
            raise _read_error(what, exc) from exc


_UTF8_MESSAGE = "invalid UTF-8 data"


def _read_error(what: str, exc: BaseException, *, utf8_retry: bool = True) -> SourceError:
    """Arrow's read error as ours: ``_NotUtf8`` (read again as binary) when a value is not
    UTF-8 and that retry applies, a ``SourceError`` with the reason otherwise."""
    message = _arrow_message(exc)
    kind = _NotUtf8 if utf8_retry and message.startswith(_UTF8_MESSAGE) else SourceError
    return kind(f"cannot read {what}: {message}")


def _arrow_message(exc: BaseException) -> str:
    text = str(exc).strip()
    if "straddl" in text:
        return "a row is larger than node.import.block-size-bytes"
    if "invalid utf8" in text.lower():
        return _UTF8_MESSAGE + " (" + text.splitlines()[0] + ")"
    return text.splitlines()[0] if text else type(exc).__name__


def id_list_batches(ids: Sequence[str], batch_size: int) -> Iterator[RawBatch]:
    """A list of reference IDs (from a message) as batches; row numbers are list positions."""
    for offset in range(0, len(ids), batch_size):
        chunk = pa.array(ids[offset:offset + batch_size], pa.string())
        numbers = pa.array(range(offset + 1, offset + 1 + len(chunk)), pa.int64())
        yield RawBatch(pa.table({REFERENCE_ID: chunk}), numbers)


class IdFileReader:
    """A file of reference IDs, one per line (optionally gzipped), streamed with Arrow."""

    def __init__(self, source: Source, *, block_size: int, batch_size: int) -> None:
        self._source = source
        self._block_size = block_size
        self._batch_size = batch_size
        self.header = [REFERENCE_ID]

    def batches(self) -> Iterator[RawBatch]:
        """Yield every ID line once, in order; blank lines are skipped."""
        return _utf8_fallback(self._batches)

    def _batches(self, as_text: bool) -> Iterator[RawBatch]:
        stream = self._source.open()
        invalid: list[InvalidRow] = []
        try:
            reader = pacsv.open_csv(
                pa.PythonFile(stream, mode="r"),
                read_options=pacsv.ReadOptions(
                    use_threads=False, block_size=self._block_size, column_names=[REFERENCE_ID]
                ),
                # No delimiter or quote can split an ID line: one line, one value.
                parse_options=pacsv.ParseOptions(delimiter="\x1f", quote_char=False,
                                                 invalid_row_handler=_invalid_handler(
                                                     invalid, header_lines=0)),
                convert_options=pacsv.ConvertOptions(
                    column_types={REFERENCE_ID: pa.string() if as_text else pa.binary()},
                    strings_can_be_null=False),
            )
            yield from _numbered(reader, invalid, self.header, self._batch_size, stream, as_text,
                                 "the ID file")
        except SourceError:
            raise
        except (pa.ArrowInvalid, OSError) as exc:
            raise _read_error("the ID file", exc) from exc
        finally:
            stream.close()
