"""Worker processes log through the parent: their lines arrive whole, written by it."""

from __future__ import annotations

import io
import logging
import multiprocessing
import threading
from typing import Any

import orjson

from nodes_import import logs


def _worker_main(queue: Any) -> None:
    """A spawned stand-in for a worker process: set up as ``init_worker`` does, then log."""
    logs.setup_worker(queue, "INFO")
    log = logging.getLogger("nodes_import.worker.engine")
    log.debug("not sent: below the level")
    log.info("job started", extra={"fields": {"jobId": "j1", "lock": threading.Lock()}})
    try:
        raise ValueError("x" * 100_000)  # a trace far longer than PIPE_BUF
    except ValueError:
        log.exception("job crashed", extra={"fields": {"jobId": "j1"}})


def test_a_workers_lines_are_written_whole_by_the_parents_handler() -> None:
    stream = io.StringIO()
    logs.setup("INFO", stream=stream)
    root = logging.getLogger()
    try:
        ctx = multiprocessing.get_context("spawn")
        listener = logs.WorkerLogs(ctx.Queue())
        listener.start()
        proc = ctx.Process(target=_worker_main, args=(listener.queue,))
        proc.start()
        proc.join(30)
        assert proc.exitcode == 0
        listener.stop()
        assert not listener.is_alive()
    finally:
        for handler in [h for h in root.handlers if getattr(h, "_nodes_import", False)]:
            root.removeHandler(handler)
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [e["message"] for e in lines] == ["job started", "job crashed"]
    assert lines[0]["jobId"] == "j1" and "lock" in lines[0]["lock"]  # not picklable: as text
    assert lines[1]["level"] == "error" and "x" * 100_000 in lines[1]["exception"]
