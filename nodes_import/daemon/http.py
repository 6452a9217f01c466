"""What the admin API's routes share (parent side): the error answer, JSON bodies, query
and form parameters, and whether the client is a browser. Standard library only."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import parse_qs

import orjson

JSON = "application/json"
MAX_LIMIT = 1000  # /jobs?limit=, /jobs/{id}/rejects?limit=
MAX_FORM_BYTES = 4096  # the body of a cancel form

REASONS = {200: "OK", 303: "See Other", 400: "Bad Request", 401: "Unauthorized",
           403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
           413: "Content Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}

Headers = list[tuple[str, str]]
Answer = tuple[int, str, bytes, Headers]  # status, content type, body, more headers
Query = dict[str, list[str]]


class HttpError(Exception):
    """An error answer: status code and message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def json_body(value: Any) -> bytes:
    """``value`` as a JSON body (datetimes and UUIDs as text)."""
    return orjson.dumps(value, default=str)


def prefers_html(environ: dict[str, Any]) -> bool:
    """Whether the client asks for HTML before JSON (a browser): ``text/html`` listed in
    ``Accept`` with a quality at least that of ``application/json``. ``*/*`` (curl) and no
    ``Accept`` at all (most clients) get JSON."""
    quality: dict[str, float] = {}
    for item in environ.get("HTTP_ACCEPT", "").split(","):
        kind, *params = (part.strip() for part in item.split(";"))
        q = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        quality[kind.lower()] = max(q, quality.get(kind.lower(), 0.0))
    html_q = max(quality.get("text/html", 0.0), quality.get("application/xhtml+xml", 0.0))
    return html_q > 0 and html_q >= quality.get("application/json", 0.0)


def one(query: Query, name: str) -> str | None:
    """The one value of a parameter (None: absent or empty; 400: given twice)."""
    values = query.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise HttpError(400, f"{name} given {len(values)} times")
    return values[0] or None


def integer(query: Query, name: str, default: int, *, minimum: int = 1,
            maximum: int = MAX_LIMIT) -> int:
    """An integer parameter within ``minimum..maximum`` (400 otherwise)."""
    raw = one(query, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HttpError(400, f"{name} must be an integer, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise HttpError(400, f"{name} must be within {minimum}..{maximum}, got {value}")
    return value


def no_params(query: Query, allowed: set[str]) -> None:
    """400 for a parameter outside ``allowed``."""
    unknown = sorted(set(query) - allowed)
    if unknown:
        raise HttpError(400, f"unknown parameter(s): {', '.join(unknown)}")


def job_id(raw: str) -> str:
    """A job id from a path (400 when it is not a UUID)."""
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise HttpError(400, f"not a job id (UUID): {raw[:100]!r}") from None


def form(environ: dict[str, Any]) -> Query:
    """A posted ``application/x-www-form-urlencoded`` body (empty for anything else), at
    most ``MAX_FORM_BYTES``."""
    if not environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
        return {}
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise HttpError(400, "bad Content-Length") from None
    if length > MAX_FORM_BYTES:
        raise HttpError(413, f"a form is at most {MAX_FORM_BYTES} bytes")
    body = environ["wsgi.input"].read(length) if length > 0 else b""
    return parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
