"""Parse: row numbering, bad rows, RFC 4180 details, sources and their limits."""

from __future__ import annotations

import gzip
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest

from nodes_import.errors import SourceError
from nodes_import.pipeline import parse
from nodes_import.pipeline.parse import CsvReader, IdFileReader
from nodes_import.pipeline.source import Source


def _source(path: Path, **limits: int) -> Source:
    return Source(str(path), allowed_roots=(str(path.parent),),
                  max_file_bytes=limits.get("max_file_bytes", 1 << 30),
                  max_decompressed_bytes=limits.get("max_decompressed_bytes", 1 << 30))


def _read(path: Path, batch_size: int = 1000) -> tuple[list[str], list[tuple[int, dict]], list]:
    reader = CsvReader(_source(path), block_size=1 << 16, batch_size=batch_size)
    rows, bad = [], []
    for batch in reader.batches():
        rows += list(zip(batch.row_numbers.to_pylist(), batch.table.to_pylist(), strict=True))
        bad += [(b.row_number, b.line) for b in batch.invalid]
    return reader.header, rows, bad


def test_bom_crlf_quotes_and_newlines_in_values_are_read_as_written(gz_csv: Callable) -> None:
    path = gz_csv(b'\xef\xbb\xbfreference_id,note\r\nr1," a, ""b""\r\nc "\r\nr2,\r\n')
    header, rows, bad = _read(path)
    assert header == ["reference_id", "note"]
    assert rows == [(1, {"reference_id": "r1", "note": ' a, "b"\r\nc '}),
                    (2, {"reference_id": "r2", "note": None})]
    assert bad == []


def test_rows_with_the_wrong_field_count_keep_their_place_in_the_numbering(
        gz_csv: Callable) -> None:
    lines = ["reference_id,a"] + [f"r{n},{n}" if n % 7 else f"r{n}" for n in range(1, 50)]
    path = gz_csv("\n".join(lines) + "\n")
    for batch_size in (1, 5, 1000):
        _, rows, bad = _read(path, batch_size)
        assert [n for n, _ in rows] == [n for n in range(1, 50) if n % 7]
        assert [r["reference_id"] for _, r in rows] == [f"r{n}" for n in range(1, 50) if n % 7]
        assert sorted(bad) == [(n, f"r{n}") for n in range(7, 50, 7)]


def test_batches_hold_exactly_batch_size_rows_whatever_the_blocks_and_count_bytes(
        gz_csv: Callable) -> None:
    path = gz_csv("reference_id,a\n" + "".join(f"r{n},{n}\n" for n in range(1, 5001)))
    reader = CsvReader(_source(path), block_size=1 << 12, batch_size=700)  # ~300 rows a block
    batches = list(reader.batches())
    assert [b.table.num_rows for b in batches] == [700] * 7 + [100]
    assert all(b.row_numbers.type == pa.int64() for b in batches)
    assert pa.concat_arrays([b.row_numbers for b in batches]).to_pylist() == \
        list(range(1, 5001))
    assert batches[-1].bytes_read == path.stat().st_size


def test_quoted_newlines_across_block_boundaries_stay_inside_their_values(
        gz_csv: Callable) -> None:
    # every row has quoted line breaks, so some fall on a 4 KiB block boundary
    body = "".join(f'r{n},"x\ny\r\nz{n}\n"\n' for n in range(1, 3001))
    reader = CsvReader(_source(gz_csv("reference_id,note\n" + body)), block_size=1 << 12,
                       batch_size=1000)
    rows = [r for b in reader.batches() for r in b.table.to_pylist()]
    assert rows == [{"reference_id": f"r{n}", "note": f"x\ny\r\nz{n}\n"}
                    for n in range(1, 3001)]


def test_only_an_empty_cell_is_null_and_null_looking_text_is_kept(gz_csv: Callable) -> None:
    _, rows, bad = _read(gz_csv('reference_id,a,b\nr1,NULL,N/A\nr2,"",NaN\nr3,,null\n'))
    assert [r for _, r in rows] == [{"reference_id": "r1", "a": "NULL", "b": "N/A"},
                                    {"reference_id": "r2", "a": None, "b": "NaN"},
                                    {"reference_id": "r3", "a": None, "b": "null"}]
    assert bad == []


@pytest.mark.parametrize("columns, refused", [(1000, False), (1001, True)])
def test_a_header_over_a_thousand_columns_is_refused_by_default(
        gz_csv: Callable, columns: int, refused: bool) -> None:
    header = ",".join(["reference_id"] + [f"c{n}" for n in range(1, columns)])
    path = gz_csv(header + "\n" + "r" + "," * (columns - 1) + "\n")
    if refused:
        with pytest.raises(SourceError, match=r"1001 columns, over node\.import\.max-columns"):
            CsvReader(_source(path), block_size=1 << 16, batch_size=10)
    else:
        assert len(CsvReader(_source(path), block_size=1 << 16, batch_size=10).header) == 1000


@pytest.mark.parametrize("ahead", [0, 200_000])  # at open; well after the first block
def test_a_csv_row_over_the_block_size_is_refused_naming_the_csv(
        gz_csv: Callable, ahead: int) -> None:
    path = gz_csv(b"reference_id,a\n" + b"r,1\n" * ahead + b"r," + b"b" * 300_000 + b"\n")
    with pytest.raises(SourceError) as caught:
        _read(path)
    assert str(caught.value) == ("cannot read the CSV: a row is larger than"
                                 " node.import.block-size-bytes")
    assert type(caught.value) is SourceError


def test_row_numbers_skip_rejected_rows_of_unknown_number_and_shift_past_the_others() -> None:
    numbers = parse._RowNumbers(10)
    unknown, third = (parse.InvalidRow(-1, "?", "r"), parse.InvalidRow(3, "x", "r"))
    numbers.pending = [third, unknown]
    got, taken = numbers.take(5)
    assert got.to_pylist() == [1, 2, 4, 5, 6]
    assert taken == [unknown, third]
    later = parse.InvalidRow(9, "y", "r")
    numbers.pending.append(later)
    # a take of no rows takes only what lies before its start, and moves nothing
    assert numbers.take(0)[1] == [] and numbers.pending == [later]
    numbers.pending.insert(0, parse.InvalidRow(7, "z", "r"))
    assert numbers.take(0)[1] == [] and len(numbers.pending) == 2
    assert numbers.take(2)[0].to_pylist() == [8, 10]


def test_plain_csv_is_accepted_and_gzip_is_found_by_magic_bytes(gz_csv: Callable) -> None:
    plain = gz_csv("reference_id\nx\n", name="plain.csv.gz", compress=False)
    zipped = gz_csv("reference_id\ny\n", name="zipped.csv", compress=True)
    assert _read(plain)[1] == [(1, {"reference_id": "x"})]
    assert _read(zipped)[1] == [(1, {"reference_id": "y"})]


NAMES = [f"c{n}" for n in range(25)]


@pytest.mark.parametrize("content, message", [
    ("id,name\n1,a\n", "the CSV has no 'reference_id' column (header: ['id', 'name'])"),
    (",".join(NAMES) + "\n", f"the CSV has no 'reference_id' column (header: {NAMES[:20]})"),
    ("reference_id,a,a,b,b\n1,2,3,4,5\n",
     "the CSV header repeats column name(s): a, b"),
    ("reference_id,a,,b\n1,2,3,4\n",
     "the CSV header has an empty column name at position 3"),
    (b"reference_id,\xff\n1,2\n", "cannot read the CSV: the header is not valid UTF-8"),
])
def test_a_bad_header_is_refused_with_a_clear_reason(gz_csv: Callable, content: str | bytes,
                                                     message: str) -> None:
    with pytest.raises(SourceError) as caught:
        CsvReader(_source(gz_csv(content)), block_size=1 << 16, batch_size=10)
    assert str(caught.value) == message


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # pyarrow's
def test_a_row_of_the_wrong_width_that_is_not_utf8_fails_the_file_naming_the_row(
        gz_csv: Callable) -> None:
    # pyarrow (<= 26) decodes a rejected row's text before our handler sees it and fails
    # the read when it cannot (known-gaps.md): the file is refused, naming the row
    path = gz_csv(b"reference_id,a\n" + b"r,1\n" * 5 + b"\xff,a,b\nq,2\n")
    with pytest.raises(SourceError) as caught:
        _read(path)
    assert str(caught.value).startswith(
        "cannot read the CSV: CSV parse error: Row #7: Expected 2 columns, got 3")


def test_corrupt_gzip_is_a_source_error_and_is_not_read_again(gz_csv: Callable) -> None:
    data = gzip.compress(("reference_id\n" + "x\n" * 100000).encode())
    path = gz_csv(data[: len(data) // 2], compress=False)
    with pytest.raises(SourceError) as caught:
        _read(path)
    assert type(caught.value) is SourceError
    assert str(caught.value).startswith("cannot decompress the file: ")


def test_an_arrow_error_without_a_message_is_named_by_its_class() -> None:
    assert parse._arrow_message(OSError()) == "OSError"
    assert parse._arrow_message(OSError("first line\nsecond")) == "first line"


@pytest.mark.parametrize("text", ["CSV conversion error to string: invalid UTF8 data",
                                  "Invalid UTF8 payload", "invalid utf8 sequence"])
def test_arrow_s_invalid_utf8_errors_are_recognised_in_any_case(text: str) -> None:
    assert type(parse._read_error("the CSV", pa.ArrowInvalid(text))) is parse._NotUtf8
    assert type(parse._read_error("the CSV", pa.ArrowInvalid(text), utf8_retry=False)) \
        is SourceError


def test_a_gzip_bomb_stops_at_the_decompressed_limit(gz_csv: Callable) -> None:
    path = gz_csv(b"reference_id\n" + b"aaaaaaaaaaaaaaa\n" * 5_000_000)
    assert path.stat().st_size < 500_000
    with pytest.raises(SourceError, match="max-decompressed-bytes"):
        reader = CsvReader(_source(path, max_decompressed_bytes=1 << 20), block_size=1 << 16,
                           batch_size=10)
        list(reader.batches())


def test_files_outside_the_allowed_roots_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not under an allowed root"):
        Source("/etc/passwd", allowed_roots=(str(tmp_path),), max_file_bytes=1 << 30,
               max_decompressed_bytes=1 << 30)
    escape = f"{tmp_path}/../../etc/passwd"
    with pytest.raises(SourceError, match="not under an allowed root"):
        Source(escape, allowed_roots=(str(tmp_path),), max_file_bytes=1 << 30,
               max_decompressed_bytes=1 << 30)
    link = tmp_path / "link.csv"
    link.symlink_to("/etc/passwd")
    with pytest.raises(SourceError, match="not under an allowed root"):
        Source(f"file://{link}", allowed_roots=(str(tmp_path),), max_file_bytes=1 << 30,
               max_decompressed_bytes=1 << 30)


def test_missing_empty_and_oversized_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file"):
        _source(tmp_path / "missing.csv.gz")
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(SourceError, match="empty"):
        _source(empty)
    big = tmp_path / "big.csv"
    big.write_bytes(b"reference_id\n" + b"x\n" * 1000)
    with pytest.raises(SourceError, match="max-file-bytes"):
        _source(big, max_file_bytes=100)


def test_reference_id_files_are_one_id_per_line(tmp_path: Path) -> None:
    path = tmp_path / "ids.txt.gz"
    path.write_bytes(gzip.compress(b"a\r\nb,c\n\"d\"\n\ne\n"))
    reader = IdFileReader(_source(path), block_size=1 << 16, batch_size=2)
    ids = [r for b in reader.batches() for r in b.table.column("reference_id").to_pylist()]
    assert ids == ["a", "b,c", '"d"', "e"]


def test_a_field_larger_than_a_read_block_is_refused_clearly(gz_csv: Callable) -> None:
    path = gz_csv(b"reference_id,blob\nx," + b"a" * 300_000 + b"\n")
    with pytest.raises(SourceError, match=r"larger than node\.import\.block-size-bytes"):
        _read(path)


@pytest.mark.parametrize(("uri", "reason"), [
    ("mock:///bucket/users.csv.gz", "no such file: mock:///bucket/users.csv.gz"),
    ("nosuchscheme://bucket/u.csv.gz", "cannot open nosuchscheme://bucket/u.csv.gz: Unrecognized"),
])
def test_a_remote_uri_goes_through_pyarrows_filesystems_and_fails_cleanly(
        uri: str, reason: str) -> None:
    with pytest.raises(SourceError) as caught:
        Source(uri, allowed_roots=(), max_file_bytes=1 << 30, max_decompressed_bytes=1 << 30)
    assert str(caught.value).startswith(reason)


def test_reading_a_local_file_never_loads_pyarrows_remote_filesystems(gz_csv: Callable) -> None:
    # pyarrow.fs loads the S3 and GCS support: ~30 ms of every import's start-up.
    path = str(gz_csv("reference_id\nr1\n"))
    code = ("import sys; from nodes_import.pipeline.source import Source; "
            f"s = Source({path!r}, allowed_roots=('/',), "
            "max_file_bytes=1 << 30, max_decompressed_bytes=1 << 30); s.open().read(); "
            "print('pyarrow.fs' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("up_to", [40, 200], ids=["few", "many"])  # both numbering paths
def test_each_batch_carries_exactly_the_invalid_rows_numbered_up_to_its_last_row(
        gz_csv: Callable, up_to: int) -> None:
    # every 4th row too wide: batches of 3 valid rows end right after one (1, 2, 4 | 5, 6, 8
    # ...); each belongs to the batch whose rows surround it, and one after a batch's last
    # row to the next (a resume from that batch's checkpoint must still record it)
    lines, valid = ["reference_id,plan"], 0
    for n in range(1, 301):
        wide = n % 4 == 3 and n <= up_to
        lines.append(f"r{n},p,extra" if wide else f"r{n},p")
        valid += not wide
    reader = CsvReader(_source(gz_csv("\n".join(lines) + "\n")), block_size=1 << 16,
                       batch_size=3)
    batches = list(reader.batches())
    previous_last, seen = 0, []
    for batch in batches[:-1]:
        last = batch.row_numbers.to_pylist()[-1]
        numbers = [b.row_number for b in batch.invalid]
        assert all(previous_last < n < last for n in numbers), (previous_last, last, numbers)
        seen += numbers
        previous_last = last
    seen += [b.row_number for b in batches[-1].invalid]
    assert seen == [n for n in range(1, 301) if lines[n].endswith(",extra")]
    assert sum(len(b.row_numbers) for b in batches) == valid


def _ids(path: Path, batch_size: int = 2) -> tuple[list[tuple[int, str | None]], list]:
    reader = IdFileReader(_source(path), block_size=1 << 16, batch_size=batch_size)
    rows, bad = [], []
    for batch in reader.batches():
        rows += list(zip(batch.row_numbers.to_pylist(),
                         batch.table.column("reference_id").to_pylist(), strict=True))
        bad += [(b.row_number, b.line, b.reason) for b in batch.invalid]
    return rows, bad


def test_an_id_file_keeps_ids_that_look_like_null_and_numbers_its_lines(
        gz_csv: Callable) -> None:
    rows, bad = _ids(gz_csv("NULL\nnull\nN/A\n\nNaN\n#N/A\n-\n"))
    assert rows == [(1, "NULL"), (2, "null"), (3, "N/A"), (4, "NaN"), (5, "#N/A"), (6, "-")]
    assert bad == []


def test_an_id_line_that_splits_or_is_not_utf8_is_a_rejected_row_in_its_place(
        gz_csv: Callable) -> None:
    rows, bad = _ids(gz_csv(b"a\nb\x1fc\nd\n\xff\xfe\ne\n"), batch_size=10)
    # the unit separator is the reader's delimiter: such a line cannot be one ID. An ID file
    # has no header line: its line 2 is row 2 (it was numbered 1, and "a" 2, before)
    assert bad == [(2, "b\x1fc", "expected 1 fields, got 2"),
                   (4, "\ufffd\ufffd", "invalid UTF-8 in column 'reference_id'")]
    assert rows == [(1, "a"), (3, "d"), (5, "e")]


def test_an_id_file_whose_first_line_splits_numbers_it_1(gz_csv: Callable) -> None:
    rows, bad = _ids(gz_csv(b"a\x1fb\nc\n"), batch_size=10)
    assert bad == [(1, "a\x1fb", "expected 1 fields, got 2")]
    assert rows == [(2, "c")]


def test_an_id_file_ending_in_rejected_lines_reports_them_after_its_last_id(
        gz_csv: Callable) -> None:
    path = gz_csv(b"a\nb\nc\x1fd\ne\x1ff\n")
    rows, bad = _ids(path, batch_size=10)
    assert rows == [(1, "a"), (2, "b")]
    assert bad == [(3, "c\x1fd", "expected 1 fields, got 2"),
                   (4, "e\x1ff", "expected 1 fields, got 2")]
    *_, last = IdFileReader(_source(path), block_size=1 << 16, batch_size=10).batches()
    assert last.table.num_rows == 0 and len(last.invalid) == 2  # a batch of them alone
    assert last.row_numbers.type == pa.int64() and last.table.column_names == ["reference_id"]
    assert last.bytes_read == path.stat().st_size  # progress: the whole file read


@pytest.mark.parametrize("ahead", [0, 200_000])  # in the first block; well after it
def test_an_id_file_with_a_line_over_the_block_size_is_refused_naming_the_id_file(
        gz_csv: Callable, ahead: int) -> None:
    path = gz_csv(b"a\n" * ahead + b"b" * 300_000 + b"\nc\n")
    with pytest.raises(SourceError) as caught:
        _ids(path, batch_size=1000)  # with rows ahead: refused while reading, not at open
    assert str(caught.value) == ("cannot read the ID file: a row is larger than"
                                 " node.import.block-size-bytes")
    # only a value that is not UTF-8 makes the reader start again in binary (_NotUtf8):
    # any other read error is refused as it is, the first time
    assert type(caught.value) is SourceError


def test_a_row_that_is_not_utf8_shows_its_empty_cells_as_empty_in_its_line(
        gz_csv: Callable) -> None:
    _, rows, bad = _read(gz_csv(b"reference_id,plan,note\nok,p,n\n\xffx,,n\n,\xfe,\n"))
    assert rows == [(1, {"reference_id": "ok", "plan": "p", "note": "n"})]
    assert bad == [(2, "\ufffdx,,n"), (3, ",\ufffd,")]


@pytest.mark.parametrize("count", [1000, 1001])  # MAX_INVALID_LINES, and one more
def test_rows_that_are_not_utf8_keep_their_line_up_to_a_thousand_a_batch(
        gz_csv: Callable, count: int) -> None:
    body = b"".join(b"\xff%d,a\x00b\n" % n for n in range(count))
    _, rows, bad = _read(gz_csv(b"reference_id,plan\nok,p\n" + body), batch_size=2000)
    assert rows == [(1, {"reference_id": "ok", "plan": "p"})]
    assert [n for n, _ in bad] == list(range(2, count + 2))
    expected = (lambda n: f"\ufffd{n},a\\0b") if count <= 1000 else (lambda n: "")
    assert [line for _, line in bad] == [expected(n) for n in range(count)]
