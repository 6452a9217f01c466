"""``process.die_with_parent``: a child dies with its parent, including a parent that died
while the child was still starting (before its prctl: the kernel then sends nothing)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.fixtures.kafka import wait_until

# The child: waits until its parent has exited (it is then someone else's child), and only
# then asks to die with it, as a worker does whose daemon was SIGKILLed while it started.
SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    from nodes_import import process
    parent = os.getpid()
    pid = os.fork()
    if pid:
        print(pid, flush=True)
        os._exit(0)
    while os.getppid() == parent:
        time.sleep(0.01)
    process.die_with_parent(signal.SIGKILL, {parent_pid})
    with open(sys.argv[1], "w") as out:
        out.write("outlived its parent")
""")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie counts as gone (reaped by whoever adopted it).
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("told", [True, False])
def test_a_child_whose_parent_died_before_it_asked_dies_when_told_who_its_parent_was(
        tmp_path: Path, told: bool) -> None:
    mark = tmp_path / "mark"
    script = SCRIPT.format(parent_pid="parent" if told else "None")
    out = subprocess.run([sys.executable, "-c", script, str(mark)], capture_output=True,
                         text=True, check=True, timeout=30)
    child = int(out.stdout.split()[0])
    wait_until(lambda: _gone(child), 20, "the child to end")
    # Told its parent's pid, it kills itself; without it, the kernel never sends the signal.
    assert mark.exists() is (not told)
