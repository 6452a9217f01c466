"""The source's limits at their exact values, ``file://`` URIs, and its stream's closing."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nodes_import.errors import SourceError
from nodes_import.pipeline.source import CountingStream, Source

BODY = b"reference_id\n" + b"".join(b"r%04d\n" % n for n in range(200))


def _source(uri: str, root: Path, *, max_file_bytes: int = 1 << 30,
            max_decompressed_bytes: int = 1 << 30) -> Source:
    return Source(uri, allowed_roots=(str(root),), max_file_bytes=max_file_bytes,
                  max_decompressed_bytes=max_decompressed_bytes)


def _read_all(source: Source) -> bytes:
    stream = source.open()
    try:
        return b"".join(iter(lambda: stream.read(1000), b""))
    finally:
        stream.close()


def test_a_file_exactly_at_each_limit_is_read_and_one_byte_over_is_refused(
        tmp_path: Path) -> None:
    path = tmp_path / "u.csv.gz"
    path.write_bytes(gzip.compress(BODY))
    size = path.stat().st_size
    assert _read_all(_source(str(path), tmp_path, max_file_bytes=size,
                             max_decompressed_bytes=len(BODY))) == BODY
    with pytest.raises(SourceError, match="max-file-bytes"):
        _source(str(path), tmp_path, max_file_bytes=size - 1)
    with pytest.raises(SourceError) as caught:
        _read_all(_source(str(path), tmp_path, max_decompressed_bytes=len(BODY) - 1))
    assert str(caught.value) == ("file decompresses past node.import.max-decompressed-bytes"
                                 f" ({len(BODY) - 1} bytes)")


def test_a_file_uri_names_a_local_file_on_this_host_only(tmp_path: Path) -> None:
    path = tmp_path / "u.csv"
    path.write_bytes(BODY)
    for uri in (f"file://{path}", f"file://localhost{path}"):
        source = _source(uri, tmp_path)
        assert (source.info.uri, source.info.size, source.info.gzip) == (uri, len(BODY), False)
        assert _read_all(source) == BODY
    with pytest.raises(SourceError) as caught:
        _source(f"file://elsewhere{path}", tmp_path)
    assert str(caught.value) == (
        f"file URI with a remote host is not supported: file://elsewhere{path}")


def test_a_missing_file_and_a_root_outside_are_refused_saying_which(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as missing:
        _source(str(tmp_path / "nothing.csv"), tmp_path)
    assert str(missing.value) == f"no such file: {tmp_path / 'nothing.csv'}"
    with pytest.raises(SourceError) as caught:
        _source("/etc/hostname", tmp_path)
    assert str(caught.value).endswith(f"(node.import.allowed-roots: {tmp_path})")


def test_a_stream_closes_once_and_reads_as_a_plain_forward_file(tmp_path: Path) -> None:
    path = tmp_path / "u.csv.gz"
    path.write_bytes(gzip.compress(BODY))
    stream = _source(str(path), tmp_path).open()
    assert (stream.readable(), stream.seekable(), stream.writable(), stream.closed) == (
        True, False, False, False)
    assert stream.read(0) == b"" and stream.tell() == 0
    assert stream.read() == BODY and stream.tell() == len(BODY)
    stream.close()
    stream.close()  # again: nothing to do
    assert stream.closed is True


class _ShortReads:
    """``data`` read back at most ``limits[n]`` bytes at the n-th read (cycling)."""

    def __init__(self, data: bytes, limits: list[int]) -> None:
        self._data, self._limits, self._reads = io.BytesIO(data), limits, 0

    def read(self, size: int | None = None) -> bytes:
        limit = self._limits[self._reads % len(self._limits)]
        self._reads += 1
        return self._data.read(limit if size is None or size < 0 else min(size, limit))

    def close(self) -> None:
        self._data.close()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"\r", b"\n", b"a", b'"']), max_size=300).map(b"".join),
       st.lists(st.integers(min_value=-1, max_value=40), min_size=1, max_size=60).filter(any),
       st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=10))
@example(b"\r\n", [2], [1])  # the CR read alone by a short read: read on for the LF
def test_the_stream_never_ends_a_read_between_a_cr_and_what_follows(
        data: bytes, sizes: list[int], short: list[int]) -> None:
    """apache/arrow#51368: Arrow's CSV reader drops the LF of a CRLF split between two
    blocks, inside quoted values too; its blocks are these reads. The decoder below may
    return fewer bytes than asked (as a GZIP decoder does at a member's end)."""
    stream = CountingStream(io.BytesIO(data), _ShortReads(data, short), 1 << 20)
    chunks, turn = [], 0
    while True:
        size = sizes[turn % len(sizes)]
        turn += 1
        chunk = stream.read(size)
        if size == 0:
            assert chunk == b""
            continue
        if not chunk:
            break
        assert size < 0 or len(chunk) <= size
        chunks.append(chunk)
        assert stream.tell() == sum(map(len, chunks))
    assert b"".join(chunks) == data  # nothing lost, nothing added, in order
    assert stream.read(100) == b""
    # no CRLF is split between two reads, but by a read of one byte
    sized = [s for s in (sizes * 999)[:turn] if s]
    for chunk, after, size in zip(chunks, chunks[1:], sized, strict=False):
        assert not (chunk.endswith(b"\r") and after.startswith(b"\n")) or size == 1


class _Failing:
    """A decoder whose every read fails with ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def read(self, size: int | None = None) -> bytes:
        raise self.error

    def close(self) -> None:
        pass


@pytest.mark.parametrize("error, shown", [(EOFError(), "EOFError"),
                                          (OSError("bad block"), "bad block")])
def test_a_decoder_error_is_refused_naming_it(error: Exception, shown: str) -> None:
    stream = CountingStream(io.BytesIO(b""), _Failing(error), 1 << 20)
    with pytest.raises(SourceError) as caught:
        stream.read(100)
    assert str(caught.value) == f"cannot decompress the file: {shown}"


def test_closing_a_gzip_stream_closes_the_stored_file_too(tmp_path: Path) -> None:
    (tmp_path / "u.csv.gz").write_bytes(gzip.compress(BODY))
    stream = _source(str(tmp_path / "u.csv.gz"), tmp_path).open()
    raw = stream._raw
    stream.close()
    assert raw.closed and stream.closed


def test_a_path_outside_the_roots_is_refused_naming_the_roots(tmp_path: Path) -> None:
    roots = (str(tmp_path / "a"), str(tmp_path / "b"))
    with pytest.raises(SourceError) as caught:
        Source("/etc/passwd", allowed_roots=roots, max_file_bytes=1, max_decompressed_bytes=1)
    assert str(caught.value) == ("refused to read /etc/passwd: not under an allowed root "
                                 f"(node.import.allowed-roots: {roots[0]}, {roots[1]})")

