"""Encode: validation, metadata JSON and partitioning, checked against plain Python."""

from __future__ import annotations

import csv
import io

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
from hypothesis import given, settings
from hypothesis import strategies as st

from nodes_import.pipeline import encode
from nodes_import.pipeline.parse import InvalidRow, RawBatch

# Any text PostgreSQL can store: everything but NUL (rejected) and lone surrogates.
texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))


def _batch(columns: dict[str, list[str | None]], invalid: list[InvalidRow] | None = None) -> RawBatch:
    n = len(next(iter(columns.values())))
    table = pa.table({k: pa.array(v, pa.string()) for k, v in columns.items()})
    return RawBatch(table, pa.array(range(1, n + 1), pa.int64()), invalid or [])


def _rows(part: encode.EncodedPart, columns: list[str]) -> list[dict[str, str]]:
    if not part.payload:
        return []
    reader = csv.reader(io.StringIO(part.payload.decode()))
    return [dict(zip(columns, row)) for row in reader]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(texts, st.one_of(st.none(), texts)), min_size=1, max_size=20))
def test_metadata_json_is_exactly_the_non_empty_cells(rows: list[tuple[str, str | None]]) -> None:
    table = pa.table({"a key": [r[0] or None for r in rows], 'q"uote\\': [r[1] for r in rows]})
    out = encode.metadata_json(table, ["a key", 'q"uote\\']).to_pylist()
    for (a, b), text in zip(rows, out):
        expected = {}
        if a:
            expected["a key"] = a
        if b:
            expected['q"uote\\'] = b
        assert orjson.loads(text) == expected


def test_rows_with_no_metadata_columns_carry_no_metadata() -> None:
    parts = encode.encode_batch(_batch({"reference_id": ["a", "b"]}), ["reference_id"], 1)
    assert encode.staged_columns(["reference_id"]) == ["row_number", "reference_id"]
    assert _rows(parts[0], ["row_number", "reference_id"]) == [
        {"row_number": "1", "reference_id": "a"}, {"row_number": "2", "reference_id": "b"}]


def test_bad_rows_are_rejected_with_their_row_number_and_reason() -> None:
    batch = _batch({
        "reference_id": ["ok", None, "   ", "x" * 256, "nul\x00", "ok2"],
        "type": [None, None, None, None, None, "T" * 65],
        "m": ["1", "2", "3", "4", "5", "6"],
    }, invalid=[InvalidRow(7, "a,b,c,d", "expected 3 fields, got 4")])
    parts = encode.encode_batch(batch, ["reference_id", "type", "m"], 1)
    reasons = {r.row_number: r.reason for r in parts[0].rejected}
    assert reasons == {
        2: "blank reference_id", 3: "blank reference_id",
        4: "reference_id longer than 255 characters", 5: "NUL byte in column 'reference_id'",
        6: "type longer than 64 characters", 7: "expected 3 fields, got 4",
    }
    assert parts[0].rows == 1
    assert parts[0].last_row == 7


def test_every_key_lands_in_exactly_one_partition_and_always_the_same_one() -> None:
    refs = [f"user-{n}" for n in range(2000)]
    batch = _batch({"reference_id": refs})
    seen: dict[str, int] = {}
    for part in encode.encode_batch(batch, ["reference_id"], 3):
        for row in _rows(part, ["row_number", "reference_id"]):
            assert row["reference_id"] not in seen
            seen[row["reference_id"]] = part.partition
    assert sorted(seen) == sorted(refs)
    counts = [list(seen.values()).count(p) for p in range(3)]
    assert min(counts) > 2000 / 3 * 0.8, counts  # spread evenly enough
    again = encode.encode_batch(_batch({"reference_id": list(reversed(refs))}), ["reference_id"], 3)
    for part in again:
        for row in _rows(part, ["row_number", "reference_id"]):
            assert seen[row["reference_id"]] == part.partition


def test_a_checkpoint_skips_rows_already_committed_per_partition() -> None:
    refs = [f"k{n}" for n in range(100)]
    full = encode.encode_batch(_batch({"reference_id": refs}), ["reference_id"], 2)
    skip = [40, 70]
    resumed = encode.encode_batch(_batch({"reference_id": refs}), ["reference_id"], 2, skip)
    for before, after in zip(full, resumed):
        expected = [r for r in _rows(before, ["n", "r"]) if int(r["n"]) > skip[before.partition]]
        assert _rows(after, ["n", "r"]) == expected


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(texts.filter(lambda s: s.strip() != "" and len(s) <= 255), texts),
                min_size=1, max_size=30))
def test_the_copy_payload_reads_back_as_the_input(rows: list[tuple[str, str]]) -> None:
    batch = _batch({"reference_id": [r[0] for r in rows], "note": [r[1] or None for r in rows]})
    (part,) = encode.encode_batch(batch, ["reference_id", "note"], 1)
    table = pacsv.read_csv(pa.py_buffer(part.payload), read_options=pacsv.ReadOptions(
        column_names=["n", "ref", "meta"]), convert_options=pacsv.ConvertOptions(
        column_types={"n": pa.int64(), "ref": pa.string(), "meta": pa.string()},
        strings_can_be_null=True, quoted_strings_can_be_null=False),
        parse_options=pacsv.ParseOptions(newlines_in_values=True))
    assert table.column("ref").to_pylist() == [r[0] for r in rows]
    metas = [orjson.loads(m) for m in table.column("meta").to_pylist()]
    assert metas == [{"note": r[1]} if r[1] else {} for r in rows]
