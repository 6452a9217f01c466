"""Files over HTTPS (and HTTP where the allow-list names an ``http://`` prefix), e.g.
pre-signed S3 or GCS URLs, streamed with the standard library's ``http.client``.

Why no third-party client: a read needs one GET at a time with a ``Range`` and a
precondition, each redirect checked against the allow-list before it is followed, two
timeouts, and resumes this package decides on (``remote.RemoteStream``). urllib3 or httpx
would give the timeouts and redirects, but their redirects would have to be switched off
(each hop is checked here) and so would their retries (a retry must resume at an offset,
checked against the ETag); what is left of them is a connection pool one stream a job
does not use.

One request (``HttpOrigin._request``):
1. connect within ``node.import.remote.connect-timeout.ms`` (TLS verified against the
   system's CAs), then wait at most ``node.import.remote.read-timeout.ms`` for each read;
2. ``GET`` with ``Range: bytes=OFFSET-`` (``bytes=0-0`` for the first one, which only
   asks for the size and identity) and, once the object's identity is known,
   ``If-Match`` (a strong ETag) or ``If-Unmodified-Since`` (Last-Modified);
3. a redirect (301, 302, 303, 307, 308) is followed, at most ``MAX_REDIRECTS`` times, only
   to a URL the allow-list admits;
4. 206 (or 200 from byte 0) is the body; 412 or another validator is a replaced file;
   408, 429 and 5xx are transient (resumed); any other status is a ``SourceError``.
"""

from __future__ import annotations

import http.client
import re
import ssl
from urllib.parse import urljoin, urlsplit

from nodes_import.config import RemoteConfig
from nodes_import.errors import SourceChangedError, SourceError
from nodes_import.pipeline.remote import (
    Identity,
    ObjectInfo,
    ReadInterrupted,
    check_allowed_uri,
    verified,
)
from nodes_import.redact import redact_uri

MAX_REDIRECTS = 5
REDIRECTS = frozenset({301, 302, 303, 307, 308})
TRANSIENT_STATUSES = frozenset({408, 429})
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
# Errors of a connection or a response that may pass: resets, timeouts, a server that
# closed early. A certificate that is not trusted is not one of them.
_NETWORK_ERRORS = (OSError, http.client.HTTPException)


class Exchange:
    """One request's connection and its response: closed together."""

    def __init__(self, connection: http.client.HTTPConnection,
                 response: http.client.HTTPResponse) -> None:
        self.connection = connection
        self.response = response

    def header(self, name: str, default: str = "") -> str:
        return self.response.getheader(name, default)

    def close(self) -> None:
        self.response.close()
        self.connection.close()


class HttpOrigin:
    """A file behind an ``https://`` (or allowed ``http://``) URL."""

    def __init__(self, uri: str, cfg: RemoteConfig, label: str) -> None:
        self._uri = uri
        self._cfg = cfg
        self._label = label
        self._tls = ssl.create_default_context()

    def stat(self) -> ObjectInfo:
        """The first GET, of byte 0 only: size, identity, whether ranges are served (a
        pre-signed URL may allow GET only, not HEAD)."""
        exchange = self._request(0, None, last=0)
        try:
            status = exchange.response.status
            size = self._total(exchange) if status == 206 else _length(exchange)
            ranges = status == 206 or exchange.header("Accept-Ranges") == "bytes"
            identity = Identity.of(exchange.header("ETag") or None,
                                   exchange.header("Last-Modified") or None)
            return ObjectInfo(size, identity, resumable=ranges)
        finally:
            exchange.close()

    def open(self, offset: int, info: ObjectInfo) -> HttpBody:
        """A response from ``offset`` on, of the version ``info`` describes."""
        exchange = self._request(offset, info)
        try:
            verified(self._label, info.identity, Identity.of(
                exchange.header("ETag") or None, exchange.header("Last-Modified") or None))
            if exchange.response.status == 200 and offset:
                raise SourceError(f"cannot resume {self._label} at byte {offset:,}: the "
                                  "server answered with the whole file")
            if exchange.response.status == 206:
                start = self._start(exchange)
                if start != offset:
                    raise SourceError(f"cannot resume {self._label}: asked for byte "
                                      f"{offset:,}, the server sent from {start:,}")
        except BaseException:
            exchange.close()
            raise
        return HttpBody(exchange)

    # -- one request, redirects followed

    def _request(self, offset: int, info: ObjectInfo | None, last: int | None = None) -> Exchange:
        headers = {"Range": f"bytes={offset}-{'' if last is None else last}",
                   "Accept-Encoding": "identity",
                   "User-Agent": "nodes-import"}
        if info is not None and info.identity.etag is not None:
            headers["If-Match"] = info.identity.etag
        elif info is not None and info.identity.last_modified is not None:
            headers["If-Unmodified-Since"] = info.identity.last_modified
        url = self._uri
        for _ in range(MAX_REDIRECTS + 1):
            exchange = self._send(url, headers)
            status = exchange.response.status
            if status not in REDIRECTS:
                return self._checked(exchange, offset)
            location = exchange.header("Location")
            exchange.close()
            if not location:
                raise SourceError(f"cannot read {self._label}: HTTP {status} without a "
                                  "Location")
            url = urljoin(url, location)
            check_allowed_uri(url, self._cfg.allowed_uris, what="follow a redirect to")
        raise SourceError(f"cannot read {self._label}: more than {MAX_REDIRECTS} redirects")

    def _send(self, url: str, headers: dict[str, str]) -> Exchange:
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connect_s = self._cfg.connect_timeout_ms / 1000.0
        connection: http.client.HTTPConnection
        if parts.scheme == "https":
            connection = http.client.HTTPSConnection(
                parts.hostname or "", parts.port, timeout=connect_s, context=self._tls)
        else:
            connection = http.client.HTTPConnection(parts.hostname or "", parts.port,
                                                    timeout=connect_s)
        try:
            connection.connect()
            assert connection.sock is not None
            connection.sock.settimeout(self._cfg.read_timeout_ms / 1000.0)
            connection.request("GET", target, headers=headers)
            return Exchange(connection, connection.getresponse())
        except ssl.SSLCertVerificationError as exc:
            connection.close()
            raise SourceError(f"cannot read {redact_uri(url)}: {exc.verify_message}") from exc
        except _NETWORK_ERRORS as exc:
            connection.close()
            raise ReadInterrupted(f"{type(exc).__name__}: {exc}") from exc

    def _checked(self, exchange: Exchange, offset: int) -> Exchange:
        status = exchange.response.status
        if status in (200, 206):
            return exchange
        exchange.close()
        what = f"HTTP {status} {exchange.response.reason}".strip()
        if status == 412 or (status == 416 and offset):
            raise SourceChangedError(f"{self._label} was replaced while it was read ({what} "
                                     f"when resuming at byte {offset:,})")
        if status == 416:  # bytes=0- of an empty file
            raise SourceError(f"file is empty: {self._label}")
        if status in TRANSIENT_STATUSES or status >= 500:
            raise ReadInterrupted(what)
        raise SourceError(f"cannot read {self._label}: {what}")

    def _start(self, exchange: Exchange) -> int:
        found = _CONTENT_RANGE.fullmatch(exchange.header("Content-Range").strip())
        if not found:
            raise SourceError(f"cannot read {self._label}: a 206 without a valid Content-Range")
        return int(found.group(1))

    def _total(self, exchange: Exchange) -> int | None:
        self._start(exchange)
        found = _CONTENT_RANGE.fullmatch(exchange.header("Content-Range").strip())
        assert found is not None
        return None if found.group(3) == "*" else int(found.group(3))


def _length(exchange: Exchange) -> int | None:
    text = exchange.header("Content-Length")
    return int(text) if text.isdigit() else None


class HttpBody:
    """The body of one response, read as it arrives."""

    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange
        self._broken: ReadInterrupted | None = None  # raised by the next read

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes as they arrive. When the connection breaks or stalls, the
        bytes received before are returned first (the resume starts after them) and
        ``ReadInterrupted`` is raised by the next read."""
        if self._broken is not None:
            raise self._broken
        pieces: list[bytes] = []
        got = 0
        while got < size:
            try:
                piece = self._exchange.response.read1(size - got)
            except _NETWORK_ERRORS as exc:
                self._broken = ReadInterrupted(f"{type(exc).__name__}: {exc}")
                if got:
                    break
                raise self._broken from exc
            if not piece:
                break
            pieces.append(piece)
            got += len(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def close(self) -> None:
        self._exchange.close()
