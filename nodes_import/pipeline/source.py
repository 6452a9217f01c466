"""Source: a file URI -> a decompressed byte stream, with its limits enforced.

Local paths (plain or ``file://``) are read only under the configured allowed roots,
after resolving symlinks and ``..``. A URI (``s3://``, ``https://``, ``gs://``, ...) is read
only under ``node.import.allowed-uris``, through ``remote.RemoteFile`` (ranged reads that
resume after a transient error, checked against the object's ETag). GZIP is detected by
its magic bytes, not by the file name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import cast
from urllib.parse import unquote, urlparse

import pyarrow as pa
from isal import igzip, isal_zlib

from nodes_import.config import RemoteConfig
from nodes_import.errors import SourceError, SourceRefusedError
from nodes_import.pipeline.remote import RemoteFile, RemoteStream

GZIP_MAGIC = b"\x1f\x8b"
# What a damaged or truncated GZIP stream raises from ISA-L's reader: BadGzipFile (an
# OSError) for a bad header, EOFError for a cut file, IsalError for corrupt data.
# isal's stub types ``isal_zlib.error`` as an instance; it is the exception class.
_INFLATE_ERRORS = (OSError, EOFError, cast("type[Exception]", isal_zlib.error))


@dataclass(frozen=True)
class SourceInfo:
    """Where a source is and how big it is (compressed, as stored)."""

    uri: str
    size: int | None
    gzip: bool


def _local_path(uri: str) -> Path | None:
    """The local path a URI names, or None when it is a remote URI."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise SourceError(f"file URI with a remote host is not supported: {uri}")
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return Path(uri)
    return None


def check_allowed(path: Path, allowed_roots: tuple[str, ...]) -> Path:
    """Resolve ``path`` (symlinks, ``..``) and refuse it unless under an allowed root."""
    resolved = path.expanduser().resolve()
    for root in allowed_roots:
        if resolved.is_relative_to(Path(root).resolve()):
            return resolved
    raise SourceRefusedError(
        f"refused to read {path}: not under an allowed root "
        f"(node.import.allowed-roots: {', '.join(allowed_roots)})"
    )


class CountingStream:
    """A file-like view of a decompressed stream that counts bytes and enforces limits.

    Wrapped with ``pa.PythonFile`` for the CSV reader. Reads come in blocks of
    ``block_size``, so the per-call overhead of Python here is negligible.
    """

    def __init__(self, raw: pa.NativeFile | RemoteStream,
                 decoded: pa.NativeFile | RemoteStream | igzip.IGzipFile, max_decompressed: int):
        self._raw = raw
        self._decoded = decoded
        self._max = max_decompressed
        self.decompressed_bytes = 0
        self._held = b""  # a carriage return held back from the last read (see read)
        self.closed = False

    @property
    def compressed_bytes(self) -> int:
        """Bytes read so far from the stored (compressed) file: the progress measure."""
        try:
            return int(self._raw.tell())
        except (OSError, ValueError):
            return 0

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` decompressed bytes (all with -1); b"" only at the end.

        A chunk never ends in a carriage return unless the file does: the CR is held back
        and starts the next chunk. Arrow's CSV reader (pyarrow <= 26, apache/arrow#51368)
        drops the LF of a CRLF split between two of its blocks even inside a quoted value,
        silently changing the value; its blocks are these reads, so none ends between the
        CR and the LF. (A short read is allowed: Arrow takes what a read returns as a block.)
        """
        if size == 0:
            return b""
        if size == 1:  # too small to hold anything back (Arrow reads whole blocks)
            chunk, self._held = self._held or self._read(1), b""
            return chunk
        # (a negative size, "all", stays negative)
        chunk = self._held + self._read(size - len(self._held))
        while chunk == b"\r":  # the CR alone: read on, or the file ends there
            more = self._read(size - 1)
            if not more:
                break
            chunk += more
        self._held = b""
        if len(chunk) > 1 and chunk.endswith(b"\r"):
            chunk, self._held = chunk[:-1], b"\r"
        return chunk

    def _read(self, size: int) -> bytes:
        """Up to ``size`` bytes from the decoder (a negative ``size``: all), counted."""
        try:
            chunk = self._decoded.read(size if size >= 0 else None)
        except _INFLATE_ERRORS as exc:
            reason = str(exc) or type(exc).__name__  # EOFError() says nothing
            raise SourceError(f"cannot decompress the file: {reason}") from exc
        self.decompressed_bytes += len(chunk)
        if self.decompressed_bytes > self._max:
            raise SourceError(
                f"file decompresses past node.import.max-decompressed-bytes ({self._max} bytes)"
            )
        return bytes(chunk)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def writable(self) -> bool:
        return False

    def tell(self) -> int:
        return self.decompressed_bytes - len(self._held)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._decoded.close()
            if self._raw is not self._decoded:
                self._raw.close()


class Source:
    """An openable source file: validated once, opened as many times as needed."""

    def __init__(
        self,
        uri: str,
        *,
        allowed_roots: tuple[str, ...],
        max_file_bytes: int,
        max_decompressed_bytes: int,
        remote: RemoteConfig | None = None,
    ) -> None:
        """``remote``: the allow-list and settings of remote files (None: no remote file
        is allowed)."""
        self._max_decompressed = max_decompressed_bytes
        self._remote: RemoteFile | None = None  # None: a local file
        local = _local_path(uri)
        size: int | None
        try:
            if local is not None:
                path = check_allowed(local, allowed_roots)
                if not path.is_file():
                    raise SourceError(f"no such file: {uri}")
                self._path, size = str(path), path.stat().st_size
            else:
                self._remote = RemoteFile(uri, remote or RemoteConfig(),
                                          max_bytes=max_file_bytes)
                size, uri = self._remote.info.size, self._remote.label
        except SourceError:
            raise
        except (OSError, pa.ArrowException, ValueError) as exc:
            raise SourceError(f"cannot open {uri}: {exc}") from exc
        if size is not None and size > max_file_bytes:
            raise SourceError(
                f"file is {size} bytes, over node.import.max-file-bytes ({max_file_bytes})"
            )
        if size == 0:
            raise SourceError(f"file is empty: {uri}")
        with self._open_raw() as raw:
            magic = raw.read(2)
        self.info = SourceInfo(uri=uri, size=size, gzip=bytes(magic) == GZIP_MAGIC)

    def _open_raw(self) -> pa.NativeFile | RemoteStream:
        # A local file as a random-access file: its tell() is how far the decompressor
        # has read, the job's progress (a remote stream tells the same).
        if self._remote is not None:
            return self._remote.open()
        try:
            return pa.OSFile(self._path, "r")
        except (OSError, pa.ArrowException) as exc:
            raise SourceError(f"cannot open {self._path}: {exc}") from exc

    def open(self) -> CountingStream:
        """A fresh decompressed stream from the start of the file."""
        raw = self._open_raw()
        # ISA-L's inflate (the isal package): 0.12-0.13 s of CPU for a 1M-row file (110 MB
        # decompressed) against 0.29-0.32 s for zlib through pyarrow's CompressedInputStream.
        # It reads concatenated members as one stream, like gzip itself.
        decoded = (igzip.IGzipFile(fileobj=raw, mode="rb")  # type: ignore[no-untyped-call]
                   if self.info.gzip else raw)
        return CountingStream(raw, decoded, self._max_decompressed)
