"""Hostile files: every input ends in clean rows or a clean SourceError, never a crash."""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodes_import.errors import SourceError
from nodes_import.pipeline import encode
from nodes_import.pipeline.parse import CsvReader
from nodes_import.pipeline.source import Source

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
cells = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                max_size=30)


def _read_all(path: Path, block_size: int = 1 << 16) -> list[dict]:
    source = Source(str(path), allowed_roots=(str(path.parent),), max_file_bytes=1 << 30,
                    max_decompressed_bytes=1 << 26)
    reader = CsvReader(source, block_size=block_size, batch_size=7)
    rows = []
    for batch in reader.batches():
        for part in encode.encode_batch(batch, reader.header, 2):
            assert part.rows >= 0
        rows += batch.table.to_pylist()
    return rows


# pyarrow decodes a malformed row's text as UTF-8 before our handler sees it; when the
# bytes are not UTF-8 that decode fails inside its callback, which Python reports as an
# "Exception ignored" (unraisable) while the reader itself fails cleanly (SourceError).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@FUZZ
@given(data=st.binary(max_size=2000), zipped=st.booleans())
def test_random_bytes_are_read_or_refused_cleanly(tmp_path: Path, data: bytes,
                                                  zipped: bool) -> None:
    path = tmp_path / "random.bin"
    path.write_bytes(gzip.compress(data) if zipped else data)
    try:
        _read_all(path)
    except SourceError as exc:
        assert str(exc)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_malformed_row_that_is_not_utf8_is_a_clean_rejection(tmp_path: Path) -> None:
    path = tmp_path / "bad-row.csv"
    path.write_bytes(b"reference_id,a\nr1,1\n\xce\xff,2,3\n")
    with pytest.raises(SourceError, match="Row #3"):
        _read_all(path)


@FUZZ
@given(header_extra=st.lists(cells.filter(lambda c: c not in ("", "reference_id")),
                             max_size=3, unique=True),
       rows=st.lists(st.lists(cells, min_size=4, max_size=4), min_size=1, max_size=25),
       terminator=st.sampled_from(["\n", "\r\n"]), bom=st.booleans())
def test_any_well_formed_csv_reads_back_exactly(tmp_path: Path, header_extra: list[str],
                                                rows: list[list[str]], terminator: str,
                                                bom: bool) -> None:
    header = ["reference_id", *header_extra]
    out = io.StringIO()
    # QUOTE_ALL: Python quotes a bare CR only when it is part of the line terminator.
    writer = csv.writer(out, lineterminator=terminator, quoting=csv.QUOTE_ALL)
    writer.writerow(header)
    for row in rows:
        writer.writerow(row[: len(header)])
    data = ("\ufeff" if bom else "") + out.getvalue()
    path = tmp_path / "wellformed.csv.gz"
    path.write_bytes(gzip.compress(data.encode()))
    try:
        got = _read_all(path)
    except SourceError as exc:
        # a header cell that is itself a duplicate after BOM handling, etc.
        pytest.fail(f"well-formed CSV refused: {exc}")
    expected = [dict(zip(header, [c or None for c in row[: len(header)]], strict=False))
                for row in rows]
    assert got == expected


def test_concatenated_gzip_members_are_read_as_one_file(tmp_path: Path) -> None:
    path = tmp_path / "members.csv.gz"
    path.write_bytes(gzip.compress(b"reference_id,a\nr1,1\n") + gzip.compress(b"r2,2\n"))
    assert _read_all(path) == [{"reference_id": "r1", "a": "1"}, {"reference_id": "r2", "a": "2"}]


@pytest.mark.parametrize("cut", [10, 100, 1000])
def test_truncated_gzip_is_refused(tmp_path: Path, cut: int) -> None:
    whole = gzip.compress(("reference_id,a\n" + "".join(f"r{n},{n}\n" for n in range(500)))
                          .encode())
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(whole[:cut])
    with pytest.raises(SourceError):
        _read_all(path)


def test_a_row_that_is_not_utf8_is_rejected_alone_with_that_reason(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"reference_id,name\nr1,ok\n" + "r2,Müller\n".encode("latin-1")
                     + b"r3,fine\n\xff\xfe,x\n" + "r5,Łódź\n".encode())
    source = Source(str(path), allowed_roots=(str(tmp_path),), max_file_bytes=1 << 30,
                    max_decompressed_bytes=1 << 26)
    reader = CsvReader(source, block_size=1 << 16, batch_size=3)
    rows, invalid = [], []
    for batch in reader.batches():
        rows += list(zip(batch.row_numbers.to_pylist(), batch.table.to_pylist(), strict=True))
        invalid += batch.invalid
    assert rows == [(1, {"reference_id": "r1", "name": "ok"}),
                    (3, {"reference_id": "r3", "name": "fine"}),
                    (5, {"reference_id": "r5", "name": "Łódź"})]
    assert [(r.row_number, r.reason, r.line) for r in invalid] == [
        (2, "invalid UTF-8 in column 'name'", "r2,M\ufffdller"),
        (4, "invalid UTF-8 in column 'reference_id'", "\ufffd\ufffd,x")]


def test_bare_cr_line_ends_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "mac.csv"
    path.write_bytes(b"reference_id,a\rr1,1\rr2,2\r")
    assert _read_all(path) == [{"reference_id": "r1", "a": "1"}, {"reference_id": "r2", "a": "2"}]


def test_a_header_only_file_imports_nothing(tmp_path: Path) -> None:
    path = tmp_path / "header.csv"
    path.write_bytes(b"reference_id,a\n")
    assert _read_all(path) == []


def test_a_bad_row_late_in_the_file_rereads_it_as_binary_without_repeating_a_row(
        tmp_path: Path) -> None:
    # Arrow fails the whole block of a value that is not UTF-8, after earlier batches were
    # handed out: the file is read again as binary and those batches are not repeated.
    lines = [f"r{n},v{n}".encode() for n in range(1, 301)]
    lines[9] = b"r10,v10,extra"  # a row of the wrong width, before the bad one
    lines[249] = b"r250,caf\xe9"  # not UTF-8, blocks later
    path = tmp_path / "late.csv.gz"
    path.write_bytes(gzip.compress(b"reference_id,name\n" + b"\n".join(lines) + b"\n"))
    source = Source(str(path), allowed_roots=(str(tmp_path),), max_file_bytes=1 << 30,
                    max_decompressed_bytes=1 << 26)
    reader = CsvReader(source, block_size=512, batch_size=7)
    numbers, refs, invalid = [], [], []
    for batch in reader.batches():
        numbers += batch.row_numbers.to_pylist()
        refs += batch.table.column("reference_id").to_pylist()
        invalid += [(r.row_number, r.reason) for r in batch.invalid]
    expected = [n for n in range(1, 301) if n not in (10, 250)]
    assert numbers == expected and refs == [f"r{n}" for n in expected]
    assert invalid == [(10, "expected 2 fields, got 3"),
                       (250, "invalid UTF-8 in column 'name'")]
