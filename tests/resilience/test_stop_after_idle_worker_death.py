"""SIGTERM after a worker died while the pool was idle: the daemon still stops, and exits 0.

Found by the chaos soak (seed 15, 30 min, 3 daemons, second run: fault #1 SIGKILLed an idle
worker of daemon 1 at 14.3 s, fault #2 sent it SIGTERM at 14.5 s): the daemon logged
"drained" and then hung until it was killed 60 s later. A worker that dies breaks Python's
ProcessPoolExecutor; its manager thread then SIGTERMs the other workers and joins them,
but our workers ignore SIGTERM, so that join never returns. With a job running, the daemon
sees BrokenProcessPool and ``WorkerPool.replace`` SIGKILLs the survivors; with none,
nothing does, and ``WorkerPool.shutdown(kill=False)`` waits on the executor forever. The
hang needs the dead worker to be the idle one that held the executor's call-queue reader
lock (blocked reading the queue; the other waits on the lock and so never reads the
shutdown sentinel): the test kills that one, told by its main thread's system call.
"""

from __future__ import annotations

import platform
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.fixtures.daemon import Daemons
from tests.fixtures.kafka import KafkaTest, wait_until

READ_SYSCALL = {"x86_64": "0", "aarch64": "63"}  # read(2): the worker holding the lock


def _reading(pid: int) -> bool:
    """The process's main thread is blocked in read(2) (``/proc/PID/syscall``)."""
    number = Path(f"/proc/{pid}/syscall").read_text().split()[0]
    return number == READ_SYSCALL[platform.machine()]


@pytest.mark.skipif(platform.machine() not in READ_SYSCALL,
                    reason="syscall numbers known for x86_64 and aarch64")
def test_sigterm_after_an_idle_worker_was_killed_stops_the_daemon_with_exit_0(
        daemons: Daemons, kafka: KafkaTest) -> None:
    kafka.create_topic()
    daemon = daemons.start()
    workers = wait_until(lambda: [p for p in psutil.Process(daemon.pid).children()
                                  if "spawn_main" in " ".join(p.cmdline())], 30, "workers")
    holder = wait_until(lambda: next((p for p in workers if _reading(p.pid)), None), 10,
                        "the worker reading the call queue")
    # 1. that idle worker dies (SIGKILL, the OOM killer); no job is running
    holder.send_signal(signal.SIGKILL)
    time.sleep(1.0)
    # 2. the operator stops the daemon
    daemon.signal(signal.SIGTERM)
    try:
        code = daemon.wait(30)
    except subprocess.TimeoutExpired:
        pytest.fail("the daemon did not stop within 30 s of SIGTERM: "
                    + daemon.log_text()[-1500:])
    assert daemon.events("daemon stopped")
    assert code == 0
