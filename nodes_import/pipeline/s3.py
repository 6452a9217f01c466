"""S3 and S3-compatible stores through pyarrow's S3 client: ranged reads checked against
the object's ETag, and uploads (``nodes-import submit --upload``).

Credentials come from the standard AWS chain pyarrow's client follows (environment,
shared credentials and config files, instance role); nothing here reads or holds a
secret. The client's own retries are off for reads (``READ_ATTEMPTS``): a retry inside
the client would re-read a range unseen, so ``remote.RemoteStream`` does them, each one
checked against the object's identity.

pyarrow sends no ``If-Match`` with a ranged GET, so each fetch is followed by a HEAD: the
bytes of a fetch are handed out only when the object still has the ETag it had when the
job began (a replacement between two fetches is seen; one that is undone again before
the HEAD, with other bytes under the same ETag, is not).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from nodes_import.config import RemoteConfig, S3Config
from nodes_import.errors import SourceError
from nodes_import.pipeline.remote import Identity, ObjectInfo, ReadInterrupted, verified
from nodes_import.redact import redact_uri

# Attempts per request inside pyarrow's client: one for reads (RemoteStream resumes), the
# client's standard three for uploads (a part is re-sent whole).
READ_ATTEMPTS = 1
UPLOAD_ATTEMPTS = 3
# How a local file is copied to an upload stream; pyarrow's S3 output stream sends a
# multipart upload in parts of its own size (10 MiB) as the bytes come.
UPLOAD_CHUNK = 8 << 20
# The AWS error names (and HTTP statuses) that may succeed when tried again.
_AWS_ERROR = re.compile(r"AWS Error (\w+)(?: \(HTTP status (\d+)\))?")
TRANSIENT_AWS_ERRORS = frozenset({
    "NETWORK_CONNECTION", "INTERNAL_FAILURE", "SERVICE_UNAVAILABLE", "SLOW_DOWN",
    "THROTTLING", "REQUEST_TIMEOUT", "REQUEST_TIME_TOO_SKEWED"})


def _endpoint(override: str) -> tuple[str, str]:
    """(scheme, host:port) of an endpoint given with or without its scheme."""
    if "://" in override:
        parts = urlsplit(override)
        return parts.scheme, parts.netloc
    return "https", override


@functools.lru_cache(maxsize=8)
def filesystem(cfg: RemoteConfig, attempts: int = READ_ATTEMPTS) -> Any:
    """pyarrow's S3 filesystem for these settings (one per process and settings)."""
    s3: S3Config = cfg.s3
    options: dict[str, Any] = {
        "connect_timeout": cfg.connect_timeout_ms / 1000.0,
        "request_timeout": cfg.read_timeout_ms / 1000.0,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=attempts),
    }
    if s3.region:
        options["region"] = s3.region
    if s3.endpoint_override:
        options["scheme"], options["endpoint_override"] = _endpoint(s3.endpoint_override)
        options["force_virtual_addressing"] = not s3.path_style
    return pafs.S3FileSystem(**options)


def classified(exc: BaseException, label: str) -> Exception:
    """pyarrow's error as ours: ``ReadInterrupted`` for what may pass (network, 5xx,
    throttling), a ``SourceError`` for the rest (missing, denied, invalid)."""
    if isinstance(exc, FileNotFoundError):
        return SourceError(f"no such file: {label}")
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    found = _AWS_ERROR.search(text)
    if found:
        name, status = found.group(1), int(found.group(2) or 0)
        if name in TRANSIENT_AWS_ERRORS or status >= 500 or status in (408, 429):
            return ReadInterrupted(text)
    return SourceError(f"cannot read {label}: {text}")


def _identity(stream: Any) -> Identity:
    meta = stream.metadata()
    etag, modified = meta.get("ETag"), meta.get("Last-Modified")
    return Identity.of(etag.decode() if etag else None,
                       modified.decode() if modified else None)


class S3Origin:
    """One S3 object: HEAD for its size and ETag, ranged GETs each followed by a HEAD."""

    def __init__(self, parts: SplitResult, cfg: RemoteConfig, label: str) -> None:
        self._path = parts.netloc + unquote(parts.path)  # bucket/key, as pyarrow names it
        self._fs = filesystem(cfg)
        self._label = label

    def _head(self) -> Any:
        try:
            return self._fs.open_input_file(self._path)
        except (OSError, pa.ArrowException) as exc:
            raise classified(exc, self._label) from exc

    def stat(self) -> ObjectInfo:
        """HEAD: the object's size and identity."""
        handle = self._head()
        try:
            return ObjectInfo(int(handle.size()), _identity(handle))
        finally:
            handle.close()

    def check(self, info: ObjectInfo) -> None:
        """HEAD again: still the object ``info`` describes?"""
        handle = self._head()
        try:
            verified(self._label, info.identity, _identity(handle))
        finally:
            handle.close()

    def open(self, offset: int, info: ObjectInfo) -> S3Body:
        """The object from ``offset`` on, once a HEAD says it is still the same one."""
        handle = self._head()
        verified(self._label, info.identity, _identity(handle))
        return S3Body(self, handle, offset, info)


class S3Body:
    """Reads of an S3 object from an offset: one ranged GET per read, then a HEAD."""

    def __init__(self, origin: S3Origin, handle: Any, offset: int, info: ObjectInfo) -> None:
        self._origin = origin
        self._handle = handle
        self._offset = offset
        self._info = info

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes from the current offset (one GET), checked by a HEAD."""
        if self._info.size is not None and self._offset >= self._info.size:
            return b""
        try:
            data = bytes(self._handle.read_at(size, self._offset))
        except (OSError, pa.ArrowException) as exc:
            raise classified(exc, self._origin._label) from exc
        self._origin.check(self._info)
        self._offset += len(data)
        return data

    def close(self) -> None:
        self._handle.close()


def upload_uri(prefix: str, job_id: str, path: Path) -> str:
    """Where ``submit --upload PREFIX`` puts a file: ``PREFIX/<job id>/<file name>``."""
    parts = urlsplit(prefix)
    if parts.scheme != "s3" or not parts.netloc or parts.query:
        raise SourceError(f"--upload takes an s3://bucket/prefix/ URI, got {redact_uri(prefix)}")
    base = prefix if prefix.endswith("/") else prefix + "/"
    return f"{base}{job_id}/{path.name}"


def upload(path: Path, uri: str, cfg: RemoteConfig) -> int:
    """Copy the local file ``path`` to the S3 object ``uri`` (a multipart upload past one
    part); the bytes sent."""
    parts = urlsplit(uri)
    target = parts.netloc + unquote(parts.path)
    fs = filesystem(cfg, UPLOAD_ATTEMPTS)
    sent = 0
    try:
        with open(path, "rb") as source, fs.open_output_stream(target, compression=None) as sink:
            while chunk := source.read(UPLOAD_CHUNK):
                sink.write(chunk)
                sent += len(chunk)
    except (OSError, pa.ArrowException) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SourceError(f"cannot upload {path} to {redact_uri(uri)}: {text}") from exc
    return sent
