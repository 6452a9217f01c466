"""Encode: validation, metadata JSON and partitioning, checked against plain Python."""

from __future__ import annotations

import orjson
import pyarrow as pa
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nodes_import.pipeline import encode
from nodes_import.pipeline.parse import InvalidRow, RawBatch

# Any text PostgreSQL can store: everything but NUL (rejected) and lone surrogates.
texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))


def _batch(columns: dict[str, list[str | None]],
           invalid: list[InvalidRow] | None = None) -> RawBatch:
    n = len(next(iter(columns.values())))
    table = pa.table({k: pa.array(v, pa.string()) for k, v in columns.items()})
    return RawBatch(table, pa.array(range(1, n + 1), pa.int64()), invalid or [])


def _field(text: str) -> str | None:
    """One COPY text-format field, decoded the way PostgreSQL's docs describe it
    (written here independently of the encoder it checks)."""
    if text == "\\N":
        return None
    escapes = {"t": "\t", "n": "\n", "r": "\r", "\\": "\\", "b": "\b", "f": "\f", "v": "\v"}
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\":
            assert i + 1 < len(text), "a field ends in a lone backslash"
            out.append(escapes.get(text[i + 1], text[i + 1]))
            i += 2
        else:
            assert text[i] not in "\t\n\r", "an unescaped separator inside a field"
            out.append(text[i])
            i += 1
    return "".join(out)


def _copy_rows(part: encode.EncodedPart) -> list[list[str | None]]:
    data = part.payload_bytes.decode()
    if not data:
        return []
    assert data.endswith("\n")
    return [[_field(f) for f in line.split("\t")] for line in data[:-1].split("\n")]


def _rows(part: encode.EncodedPart, columns: list[str]) -> list[dict[str, str | None]]:
    return [dict(zip(columns, row, strict=True)) for row in _copy_rows(part)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(texts, st.one_of(st.none(), texts)), min_size=1, max_size=20))
def test_metadata_json_is_exactly_the_non_empty_cells(rows: list[tuple[str, str | None]]) -> None:
    table = pa.table({"a key": [r[0] or None for r in rows], 'q"uote\\': [r[1] for r in rows]})
    out = encode.metadata_json(table, ["a key", 'q"uote\\']).to_pylist()
    for (a, b), text in zip(rows, out, strict=True):
        expected = {}
        if a:
            expected["a key"] = a
        if b:
            expected['q"uote\\'] = b
        assert orjson.loads(text) == expected


@pytest.mark.parametrize("copy", [False, True])
def test_text_that_looks_like_the_json_builder_s_own_fragments_is_kept(copy: bool) -> None:
    values = ["{,", "a{,b{,", None, "{,{,}"]
    table = pa.table({"reference_id": ["r1", "r2", "r3", "r4"], "{,": values,
                      "b": ["x", None, None, "{,"]})
    if copy:
        part = encode.encode_batch(_batch({k: table.column(k).to_pylist()
                                           for k in table.column_names}),
                                   table.column_names, 1)[0]
        texts = [row["metadata"] for row in _rows(part, ["row_number", "reference_id",
                                                         "metadata"])]
    else:
        texts = encode.metadata_json(table, ["{,", "b"]).to_pylist()
    assert [orjson.loads(text) for text in texts] == [
        {"{,": "{,", "b": "x"}, {"{,": "a{,b{,"}, {}, {"{,": "{,{,}", "b": "{,"}]


def test_metadata_json_of_no_columns_is_a_null_string_per_row() -> None:
    out = encode.metadata_json(pa.table({"reference_id": ["a", "b", "c"]}), [])
    assert out.type == pa.string()
    assert out.to_pylist() == [None, None, None]


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


def _reference_partition(ref: str, partitions: int) -> int:
    """The partition function in plain Python: the last 4 bytes of the key left-padded
    with "0" to 4 characters, little-endian, times 2654435761 (mod 2^32), >> 16, mod n."""
    tail = ref.rjust(4, "0").encode()[-4:]
    return ((int.from_bytes(tail, "little") * 2654435761) % 2**32 >> 16) % partitions


@given(st.lists(st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1,
                        max_size=7).filter(lambda t: t.strip()), min_size=1, max_size=40))
@settings(max_examples=200)
@example(["a", "b-1", "éé", "日本", "user-1234"])  # short keys beside long ones
@example(["user-1", "user-2"])  # none short: no padding pass
def test_a_keys_partition_is_a_fixed_function_of_the_key_alone(refs: list[str]) -> None:
    # Checkpoints are per partition: a resumed job must put every key where it went before,
    # whatever else its batch holds (short keys or not) and whichever version wrote it.
    for part in encode.encode_batch(_batch({"reference_id": refs}), ["reference_id"], 3):
        for row in _rows(part, ["row_number", "reference_id"]):
            assert part.partition == _reference_partition(row["reference_id"], 3)


def test_a_checkpoint_skips_rows_already_committed_per_partition() -> None:
    refs = [f"k{n}" for n in range(100)]
    full = encode.encode_batch(_batch({"reference_id": refs}), ["reference_id"], 2)
    skip = [40, 70]
    resumed = encode.encode_batch(_batch({"reference_id": refs}), ["reference_id"], 2, skip)
    for before, after in zip(full, resumed, strict=True):
        expected = [r for r in _rows(before, ["n", "r"]) if int(r["n"]) > skip[before.partition]]
        assert _rows(after, ["n", "r"]) == expected


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(texts.filter(lambda s: s.strip() != "" and len(s) <= 255), texts),
                min_size=1, max_size=30))
def test_the_copy_payload_reads_back_as_the_input(rows: list[tuple[str, str]]) -> None:
    batch = _batch({"reference_id": [r[0] for r in rows], "note": [r[1] or None for r in rows]})
    (part,) = encode.encode_batch(batch, ["reference_id", "note"], 1)
    decoded = _copy_rows(part)
    assert [int(r[0]) for r in decoded] == list(range(1, len(rows) + 1))
    assert [r[1] for r in decoded] == [r[0] for r in rows]
    assert [orjson.loads(r[2]) for r in decoded] == [{"note": r[1]} if r[1] else {} for r in rows]
    assert encode.payload_rows(part) == [(n, r[0]) for n, r in enumerate(rows, 1)]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(texts.filter(lambda s: s.strip() != "" and len(s) <= 255),
                          st.one_of(st.none(), texts.filter(lambda s: len(s) <= 64)),
                          st.one_of(st.none(), texts), st.one_of(st.none(), texts)),
                min_size=1, max_size=30),
       st.integers(1, 3))
@example([("r", None, None, '"')], 1)
@example([("r", "t", 'a\\b', "\x01")], 1)
def test_every_column_shape_round_trips(rows: list[tuple[str, str | None, str | None, str | None]],
                                        partitions: int) -> None:
    """Type column, empty cells (no key) and full rows (the one-join path) alike."""
    header = ["reference_id", "type", "a", 'b"\\\t']
    batch = _batch({name: [r[i] or None for r in rows] for i, name in enumerate(header)})
    decoded = [row for part in encode.encode_batch(batch, header, partitions)
               for row in _copy_rows(part)]
    assert len(decoded) == len(rows)
    for number, ref, node_type, meta in decoded:
        ref_in, type_in, a, b = rows[int(number) - 1]
        assert (ref, node_type) == (ref_in, type_in or None)
        expected = {k: v for k, v in (("a", a), ('b"\\\t', b)) if v}
        assert orjson.loads(meta) == expected


def test_values_that_need_escaping_take_the_slow_path_only_where_needed() -> None:
    batch = _batch({"reference_id": ["tab\there", "plain"], "m": ['quote "x"', "ok"],
                    "n": ["back\\slash\nnewline", "fine"]})
    (part,) = encode.encode_batch(batch, ["reference_id", "m", "n"], 1)
    assert part.payload_bytes.decode().splitlines()[0] == (
        # JSON escapes the quotes, backslash and newline; COPY text doubles JSON's backslashes
        '1\ttab\\there\t{"m":"quote \\\\"x\\\\"","n":"back\\\\\\\\slash\\\\nnewline"}')
    assert part.payload_bytes.decode().splitlines()[1] == '2\tplain\t{"m":"ok","n":"fine"}'


def test_huge_batches_are_joined_in_slices_with_the_same_bytes(monkeypatch) -> None:
    refs = [f"r{n}" for n in range(100)]
    batch = _batch({"reference_id": refs, "m": [f"v{n}" if n % 3 else None for n in range(100)]})
    (whole,) = encode.encode_batch(batch, ["reference_id", "m"], 1)
    monkeypatch.setattr(encode, "MAX_JOIN_BYTES", 200)
    (sliced,) = encode.encode_batch(batch, ["reference_id", "m"], 1)
    assert len(sliced.payload) > len(whole.payload) == 1
    assert sliced.payload_bytes == whole.payload_bytes


def test_each_rejected_row_travels_with_its_key_s_partition_and_parser_rows_once() -> None:
    refs = [f"user-{n}" if n % 5 else f"user-{n}\x00" for n in range(60)]  # 12 NUL keys
    invalid = [InvalidRow(61, "a,b", "expected 1 fields, got 2"),
               InvalidRow(62, "c,d", "expected 1 fields, got 2")]
    parts = encode.encode_batch(_batch({"reference_id": refs}, invalid), ["reference_id"], 3)
    for part in parts:  # checkpoints are per partition: a resumed job skips a rejected
        for r in part.rejected:  # row by its key's partition's checkpoint, as the others
            if r.row_number <= 60:
                assert _reference_partition(refs[r.row_number - 1], 3) == part.partition
    rejected = sorted(r.row_number for part in parts for r in part.rejected)
    assert rejected == [n + 1 for n in range(0, 60, 5)] + [61, 62]  # each once
    assert [r.row_number for r in parts[0].rejected][-2:] == [61, 62]  # the parser's: part 0


def test_a_partition_with_nothing_in_a_batch_reports_last_row_0() -> None:
    refs = ["user-1"] * 3  # one key: one partition gets every row
    parts = encode.encode_batch(_batch({"reference_id": refs}), ["reference_id"], 4)
    assert sorted(p.last_row for p in parts) == [0, 0, 0, 3]


@pytest.mark.parametrize("column", ["reference_id", "m"])
def test_a_backslash_that_is_the_first_byte_of_a_column_is_escaped(column: str) -> None:
    values = {"reference_id": ["r1", "r2"], "m": ["a", "b"]}
    values[column] = ["\\" + values[column][0], values[column][1]]  # first byte: "\\"
    (part,) = encode.encode_batch(_batch(values), ["reference_id", "m"], 1)
    rows = _rows(part, ["row_number", "reference_id", "metadata"])
    assert rows[0]["reference_id"] == values["reference_id"][0]
    assert orjson.loads(rows[0]["metadata"] or "{}") == {"m": values["m"][0]}
