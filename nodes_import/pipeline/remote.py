"""Remote sources: the allow-list, and a byte stream that resumes where it broke.

A file named by a URI (``s3://`` in ``s3.py``, ``https://`` and ``http://`` in ``http.py``,
``gs://`` and ``hdfs://`` through pyarrow's filesystems as they are) is read like this:

1. the URI is checked against ``node.import.allowed-uris`` before any request is made
   (``check_allowed_uri``; ``http.py`` checks every redirect the same way);
2. its origin is asked once for the object's size and identity (ETag, Last-Modified):
   ``RemoteFile``, made when the job's ``Source`` is;
3. each open of the source streams from byte 0 through a ``RemoteStream``: its reads are
   served from a buffer that ranged fetches fill, each twice the last, from 64 KiB (or
   the size of the read) to 8 MiB (a read of the magic bytes or the header costs little,
   a whole file few requests);
4. a transient error (connection reset, timeout, HTTP 5xx or 429) closes the response,
   waits, and opens a new one at the byte offset already received, on the condition that
   the object is still the one of step 2: another one is a ``SourceChangedError``, more
   than ``node.import.remote.max-retries`` errors in a row a ``SourceError``. Either
   fails the job; nothing of a second version is ever handed to the parser.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol, Self
from urllib.parse import SplitResult, unquote, urlsplit

from nodes_import.config import RemoteConfig
from nodes_import.errors import SourceChangedError, SourceError, SourceRefusedError
from nodes_import.redact import redact_uri

log = logging.getLogger(__name__)

# Schemes read as remote files, and the ones whose origins resume and check the identity.
REMOTE_SCHEMES = ("s3", "https", "http", "gs", "gcs", "hdfs")
# pyarrow's in-process memory filesystem: no request is ever made, so no allow-list.
IN_MEMORY_SCHEMES = ("mock",)
_DEFAULT_PORTS = {"https": 443, "http": 80}
# The first fetch of a stream, and the largest: a stream buffers at most one fetch.
FIRST_FETCH = 64 << 10
MAX_FETCH = 8 << 20
# The wait before a resume doubles with each failure in a row, up to this many times the
# first one (node.import.remote.retry-interval.ms).
MAX_WAIT_FACTOR = 16


class ReadInterrupted(Exception):
    """A transient read error (reset, timeout, 5xx, 429): the read may resume. Never
    leaves the pipeline: ``RemoteStream`` resumes it or turns it into a ``SourceError``."""


# -- the allow-list --------------------------------------------------------------------


def _split(uri: str) -> SplitResult:
    """``uri`` parsed, or a ``SourceRefusedError`` for what no allow-list may admit:
    credentials in the authority, ``.``/``..`` path segments (also percent-encoded),
    whitespace, control characters or backslashes, an unknown or missing host."""
    label = redact_uri(uri)
    if any(c.isspace() or ord(c) < 32 or c == "\\" for c in uri):
        raise SourceRefusedError(f"refused to read {label}: the URI holds whitespace, a "
                                 "control character or a backslash")
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - validates the port
    except ValueError as exc:
        raise SourceRefusedError(f"refused to read {label}: not a valid URI ({exc})") from exc
    if "@" in parts.netloc:
        raise SourceRefusedError(f"refused to read {label}: credentials in a URI are not "
                                 "accepted (S3 takes them from the AWS chain)")
    if not parts.hostname:
        raise SourceRefusedError(f"refused to read {label}: the URI names no host or bucket")
    if any(segment in (".", "..") for segment in unquote(parts.path).split("/")):
        raise SourceRefusedError(f"refused to read {label}: '.' or '..' in the path")
    return parts


def _place(parts: SplitResult) -> tuple[str, str, str]:
    """(scheme, host[:port], path) as compared: lower-case scheme and host, default
    ports dropped, the path as given (``/`` when empty)."""
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    return scheme, host, parts.path or "/"


def check_allowed_uri(uri: str, allowed: tuple[str, ...], *, what: str = "read") -> None:
    """Refuse ``uri`` unless it is under one of the ``allowed`` prefixes: the same scheme
    and host (and port), and a path that starts with the prefix's path. A prefix that is
    not a URI never matches. Makes no request."""
    label = redact_uri(uri)
    if not allowed:
        raise SourceRefusedError(f"refused to {what} {label}: no remote source is allowed "
                                 "(node.import.allowed-uris is empty)")
    scheme, host, path = _place(_split(uri))
    for prefix in allowed:
        try:
            p_scheme, p_host, p_path = _place(urlsplit(prefix))
        except ValueError:
            continue
        if (p_scheme, p_host) == (scheme, host) and p_host and path.startswith(p_path):
            return
    raise SourceRefusedError(f"refused to {what} {label}: not under node.import.allowed-uris "
                             f"({', '.join(redact_uri(p) for p in allowed)})")


# -- what an origin tells, and what it must do ----------------------------------------


@dataclass(frozen=True)
class Identity:
    """Which version of an object: its validators as the server sent them. A weak ETag
    (``W/...``) does not promise the same bytes and is not kept."""

    etag: str | None = None
    last_modified: str | None = None

    @classmethod
    def of(cls, etag: str | None, last_modified: str | None) -> Identity:
        """From header values (a weak ETag dropped)."""
        if etag is not None and etag.startswith("W/"):
            etag = None
        return cls(etag or None, last_modified or None)

    @property
    def known(self) -> bool:
        """The server gave a validator: a resume can be checked."""
        return self.etag is not None or self.last_modified is not None

    def same_as(self, other: Identity) -> bool:
        """Both describe the same version (compared on the validator both have)."""
        if self.etag is not None and other.etag is not None:
            return self.etag == other.etag
        if self.last_modified is not None and other.last_modified is not None:
            return self.last_modified == other.last_modified
        return False

    def __str__(self) -> str:
        if self.etag is not None:
            return f"ETag {self.etag}"
        return f"Last-Modified {self.last_modified}" if self.last_modified else "no validator"


@dataclass(frozen=True)
class ObjectInfo:
    """What the first request told about the object."""

    size: int | None  # None: the server did not say (a chunked response)
    identity: Identity
    resumable: bool = True  # the origin can open the object at a byte offset


class Body(Protocol):
    """One response: its bytes from the offset it was opened at."""

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes (``b""`` at the end); ``ReadInterrupted`` on a transient
        error."""

    def close(self) -> None:
        """Release the connection."""


class Origin(Protocol):
    """Where a remote object is: asked once for its size and identity, then opened at
    byte offsets. Raises ``ReadInterrupted`` for transient errors, ``SourceError`` for
    the others."""

    def stat(self) -> ObjectInfo:
        """The object's size and identity (the first request)."""

    def open(self, offset: int, info: ObjectInfo) -> Body:
        """A response from ``offset`` on, of the object ``info`` describes; another
        version is a ``SourceChangedError``."""


def verified(label: str, expected: Identity, got: Identity) -> None:
    """Raise ``SourceChangedError`` unless ``got`` is the version ``expected``."""
    if expected.known and not expected.same_as(got):
        raise SourceChangedError(f"{label} was replaced while it was read ({expected}, "
                                 f"now {got}): the job stops rather than mix two versions")


# -- resuming -----------------------------------------------------------------------


class Patience:
    """Transient errors in a row, and the waits between them (``node.import.remote.*``)."""

    def __init__(self, cfg: RemoteConfig, label: str) -> None:
        self._max = cfg.max_retries
        self._first_s = cfg.retry_interval_ms / 1000.0
        self._label = label
        self.failures = 0  # in a row
        self.resumes = 0  # in all

    def failed(self, exc: ReadInterrupted, offset: int) -> None:
        """Count a failure and wait before the next attempt; a ``SourceError`` when the
        budget is spent."""
        self.failures += 1
        if self.failures > self._max:
            raise SourceError(f"cannot read {self._label}: {exc} (at byte {offset:,}, "
                              f"{self._max} retries in a row failed: "
                              "node.import.remote.max-retries)") from exc
        wait = self._first_s * min(2 ** (self.failures - 1), MAX_WAIT_FACTOR)
        log.warning("remote read interrupted; resuming", extra={"fields": {
            "source": self._label, "offset": offset, "attempt": self.failures,
            "waitS": wait, "error": str(exc)}})
        time.sleep(wait)

    def succeeded(self) -> None:
        """Bytes came: the next failure is the first in a row again."""
        if self.failures:
            self.resumes += 1
            self.failures = 0


class RemoteStream:
    """A readable file over an ``Origin`` that resumes at the byte offset it reached.

    What ``CountingStream`` and ISA-L's reader read from. ``tell()`` is the count of bytes
    handed out: the job's progress. Holds at most one fetch (``MAX_FETCH``) in memory.
    """

    def __init__(self, origin: Origin, info: ObjectInfo, *, label: str, cfg: RemoteConfig,
                 max_bytes: int) -> None:
        self._origin = origin
        self._info = info
        self._label = label
        self._max_bytes = max_bytes
        self._patience = Patience(cfg, label)
        self._body: Body | None = None
        self._fetched = 0  # bytes received from the origin
        self._data = b""
        self._pos = 0  # bytes of _data handed out
        self._next_fetch = FIRST_FETCH
        self.closed = False

    @property
    def resumes(self) -> int:
        """How many times a read resumed after a transient error."""
        return self._patience.resumes

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (all that is left when ``size`` is None or negative)."""
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(MAX_FETCH), b""))
        if self._pos >= len(self._data):
            self._data, self._pos = self._fetch(max(size, self._next_fetch)), 0
            self._next_fetch = min(max(self._next_fetch, len(self._data)) * 2, MAX_FETCH)
        if self._pos == 0 and size >= len(self._data):
            self._pos = len(self._data)
            return self._data
        chunk = self._data[self._pos:self._pos + size]
        self._pos += len(chunk)
        return chunk

    def readinto(self, buffer: bytearray | memoryview) -> int:
        """Read into ``buffer`` (ISA-L's reader reads this way); the count."""
        data = self.read(len(buffer))
        memoryview(buffer).cast("B")[:len(data)] = data
        return len(data)

    def _fetch(self, size: int) -> bytes:
        size = min(size, MAX_FETCH)
        if self._info.size is not None and self._fetched >= self._info.size:
            return b""  # all in: no request (a range from the end would be refused)
        while True:
            try:
                if self._body is None:
                    self._body = self._origin.open(self._fetched, self._info)
                data = self._body.read(size)
                self._check_length(len(data))
            except ReadInterrupted as exc:
                self._drop_body()
                if self._fetched and not (self._info.resumable and self._info.identity.known):
                    raise SourceError(f"cannot read {self._label}: {exc} at byte "
                                      f"{self._fetched:,}, and it cannot be resumed: "
                                      f"{self._why_not_resumable()}") from exc
                self._patience.failed(exc, self._fetched)
                continue
            self._fetched += len(data)
            if data:
                self._patience.succeeded()
            if self._fetched > self._max_bytes:
                raise SourceError(f"{self._label} is larger than node.import.max-file-bytes "
                                  f"({self._max_bytes})")
            return data

    def _check_length(self, got: int) -> None:
        size = self._info.size
        if size is None:
            return
        if got == 0 and self._fetched < size:
            raise ReadInterrupted(f"the response ended at byte {self._fetched:,} of {size:,}")
        if self._fetched + got > size:
            raise SourceChangedError(f"{self._label} was replaced while it was read: it is "
                                     f"now longer than its {size:,} bytes")

    def _why_not_resumable(self) -> str:
        if not self._info.resumable:
            return "the server does not serve byte ranges"
        return "the server sends neither an ETag nor a Last-Modified to check it against"

    def _drop_body(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            try:
                body.close()
            except Exception:  # a broken connection may fail to close
                log.debug("closing a broken response failed", exc_info=True)

    def tell(self) -> int:
        """Bytes handed out so far."""
        return self._fetched - (len(self._data) - self._pos)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def writable(self) -> bool:
        return False

    def close(self) -> None:
        """Close the response."""
        if not self.closed:
            self.closed = True
            self._drop_body()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# -- a remote file -------------------------------------------------------------------


def _origin_for(uri: str, parts: SplitResult, cfg: RemoteConfig, label: str) -> Origin:
    scheme = parts.scheme.lower()
    if scheme == "s3":
        from nodes_import.pipeline.s3 import S3Origin

        return S3Origin(parts, cfg, label)
    if scheme in ("https", "http"):
        from nodes_import.pipeline.http import HttpOrigin

        return HttpOrigin(uri, cfg, label)
    from nodes_import.pipeline.arrowfs import ArrowOrigin

    return ArrowOrigin(uri, label)


class RemoteFile:
    """A remote file: allowed, asked once for its size and identity (with the same
    patience for transient errors as a read), then opened as often as the reader needs."""

    def __init__(self, uri: str, cfg: RemoteConfig, *, max_bytes: int) -> None:
        self.label = redact_uri(uri)
        scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
        if scheme not in REMOTE_SCHEMES + IN_MEMORY_SCHEMES:
            raise SourceError(f"cannot open {self.label}: Unrecognized URI scheme "
                              f"{scheme!r} (remote files: {', '.join(REMOTE_SCHEMES)})")
        if scheme in IN_MEMORY_SCHEMES:
            parts = urlsplit(uri)
        else:
            check_allowed_uri(uri, cfg.allowed_uris)
            parts = _split(uri)
            if parts.query and scheme not in ("https", "http"):
                raise SourceRefusedError(f"refused to read {self.label}: a {scheme}:// URI "
                                         "takes no query string")
        self._cfg = cfg
        self._max_bytes = max_bytes
        self._origin = _origin_for(uri, parts, cfg, self.label)
        patience = Patience(cfg, self.label)
        while True:
            try:
                self.info = self._origin.stat()
                break
            except ReadInterrupted as exc:
                patience.failed(exc, 0)

    def open(self) -> RemoteStream:
        """A stream from byte 0 (no request until the first read)."""
        return RemoteStream(self._origin, self.info, label=self.label, cfg=self._cfg,
                            max_bytes=self._max_bytes)
