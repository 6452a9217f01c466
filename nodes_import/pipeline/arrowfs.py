"""Remote files through pyarrow's other filesystems (``gs://``, ``hdfs://``, and the
in-memory ``mock://`` of the tests), as pyarrow reads them: one stream per open, the
filesystem's own retries, no resume at an offset and no identity check (an error in the
middle of such a file fails the job)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from nodes_import.errors import SourceError
from nodes_import.pipeline.remote import Identity, ObjectInfo


class ArrowOrigin:
    """A file that ``pyarrow.fs.FileSystem.from_uri`` resolves."""

    def __init__(self, uri: str, label: str) -> None:
        self._label = label
        try:
            self._fs, self._path = pafs.FileSystem.from_uri(uri)
        except (OSError, pa.ArrowException, ValueError) as exc:
            raise SourceError(f"cannot open {label}: {exc}") from exc

    def stat(self) -> ObjectInfo:
        """The file's size; pyarrow tells no identity."""
        try:
            info = self._fs.get_file_info(self._path)
        except (OSError, pa.ArrowException) as exc:
            raise SourceError(f"cannot open {self._label}: {exc}") from exc
        if info.type != pafs.FileType.File:
            raise SourceError(f"no such file: {self._label}")
        return ObjectInfo(info.size, Identity(), resumable=False)

    def open(self, offset: int, info: ObjectInfo) -> ArrowBody:
        """The file from its start (``offset`` is always 0: not resumable)."""
        try:
            return ArrowBody(self._fs.open_input_stream(self._path, compression=None),
                             self._label)
        except (OSError, pa.ArrowException) as exc:
            raise SourceError(f"cannot open {self._label}: {exc}") from exc


class ArrowBody:
    """A pyarrow input stream; its errors are final."""

    def __init__(self, stream: Any, label: str) -> None:
        self._stream = stream
        self._label = label

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes."""
        try:
            return bytes(self._stream.read(size))
        except (OSError, pa.ArrowException) as exc:
            raise SourceError(f"cannot read {self._label}: {exc}") from exc

    def close(self) -> None:
        self._stream.close()
