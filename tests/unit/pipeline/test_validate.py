"""Which rows are rejected and why, at each limit and just inside it; the dry run's
``validate_batch`` rejects and keeps exactly what the import's ``encode_batch`` does."""

from __future__ import annotations

import pyarrow as pa
import pytest

from nodes_import.pipeline import encode
from nodes_import.pipeline.parse import InvalidRow, RawBatch
from nodes_import.pipeline.validate import Rejected, from_invalid, reject_mask, rejected_rows

MAX_FIELD_BYTES = 300
# (reference_id, type, plan) -> the reason, or None when the row is kept
ROWS: list[tuple[tuple[str | None, str | None, str | None], str | None]] = [
    (("ok", "USER", "p"), None),
    (("r" * 255, "T" * 64, "x" * 300), None),  # every value at its limit: kept
    ((None, "USER", "p"), "blank reference_id"),
    ((" \t", "USER", "p"), "blank reference_id"),
    (("r" * 256, "USER", "p"), "reference_id longer than 255 characters"),
    (("t", "T" * 65, "p"), "type longer than 64 characters"),
    (("n", "USER", "a\x00b"), "NUL byte in column 'plan'"),
    (("nul\x00ref", "USER", "p"), "NUL byte in column 'reference_id'"),
    (("big", "USER", "é" * 151), "value in column 'plan' longer than 300 bytes"),
    (("nullplan", None, None), None),
    # at a limit and rejected for another reason: named for that reason
    (("s" * 255, "T" * 64, "z\x00"), "NUL byte in column 'plan'"),
    (("é" * 150, "USER", "é" * 151), "value in column 'plan' longer than 300 bytes"),
]


def _batch(invalid: list[InvalidRow] | None = None) -> RawBatch:
    columns = list(zip(*(row for row, _ in ROWS), strict=True))
    table = pa.table({"reference_id": pa.array(columns[0], pa.string()),
                      "type": pa.array(columns[1], pa.string()),
                      "plan": pa.array(columns[2], pa.string())})
    return RawBatch(table, pa.array(range(10, 10 + len(ROWS)), pa.int64()), invalid or [])


def test_each_rejected_row_has_its_reason_its_key_and_its_line() -> None:
    batch = _batch()
    table = batch.table
    mask = reject_mask(table, MAX_FIELD_BYTES, {"plan", "reference_id"})
    assert mask.to_pylist() == [reason is not None for _, reason in ROWS]
    got = rejected_rows(table, batch.row_numbers, mask, MAX_FIELD_BYTES)
    assert [(r.row_number, r.reason) for r in got] == [
        (10 + n, reason) for n, (_, reason) in enumerate(ROWS) if reason is not None]
    by_number = {r.row_number: r for r in got}
    assert by_number[12] == Rejected(12, None, "blank reference_id", ",USER,p")
    assert by_number[13].reference_id == " \t"
    assert by_number[16].line == "n,USER,a\\0b"  # NUL shown as \0 in the stored line
    assert by_number[17].reference_id == "nul\\0ref"
    assert by_number[14].reference_id == "r" * 255  # cut to what the column holds


def test_the_dry_run_rejects_and_keeps_exactly_what_the_import_does() -> None:
    invalid = [InvalidRow(30, "a,b,c,d", "expected 3 fields, got 4")]
    batch = _batch(invalid)
    dry = encode.validate_batch(batch, MAX_FIELD_BYTES)
    parts = encode.encode_batch(batch, ["reference_id", "type", "plan"], 2,
                                max_field_bytes=MAX_FIELD_BYTES)
    imported = sorted((r for p in parts for r in p.rejected), key=lambda r: r.row_number)
    assert dry.rejected == imported
    assert [r.row_number for r in dry.rejected] == [12, 13, 14, 15, 16, 17, 18, 20, 21, 30]
    assert dry.rejected[-1] == Rejected(30, None, "expected 3 fields, got 4", "a,b,c,d")
    written = sorted(ref for p in parts for _, ref in encode.payload_rows(p))
    assert sorted(dry.keys.to_pylist()) == written == sorted(["ok", "r" * 255, "nullplan"])


@pytest.mark.parametrize("invalid", [[], [InvalidRow(3, "x", "not UTF-8")]])
def test_a_batch_without_bad_values_keeps_every_key(invalid: list[InvalidRow]) -> None:
    table = pa.table({"reference_id": ["a", "b"], "plan": ["1", "2"]})
    dry = encode.validate_batch(RawBatch(table, pa.array([1, 2], pa.int64()), invalid))
    assert dry.keys.to_pylist() == ["a", "b"]
    assert [r.row_number for r in dry.rejected] == [r.row_number for r in invalid]


def test_a_row_the_parser_could_not_split_is_stored_with_its_nul_bytes_shown() -> None:
    # PostgreSQL text cannot hold NUL: job_failures.line gets \0 instead
    invalid = [InvalidRow(3, "a\x00b,c,d", "expected 2 fields, got 3")]
    assert from_invalid(invalid) == [Rejected(3, None, "expected 2 fields, got 3", "a\\0b,c,d")]
