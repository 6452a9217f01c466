"""Process-level helpers shared by the parent's children: the worker processes and the
local broker it may start."""

from __future__ import annotations

import ctypes
import os
from typing import Any

# prctl option from <linux/prctl.h>: the signal a process gets when its parent dies.
_PR_SET_PDEATHSIG = 1

# Resolved at import, in the parent: a child between fork and exec must not load libraries.
try:
    _PRCTL: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: children then outlive their parent
    _PRCTL = None


def die_with_parent(sig: int, parent_pid: int | None = None) -> None:
    """Ask for ``sig`` when the parent process dies (Linux only; elsewhere nothing).

    ``parent_pid``: the process that started this one. The kernel sends ``sig`` only for a
    death *after* the call: a parent that died while this process was still starting (a
    daemon SIGKILLed while it replaced a broken pool, seen in the soak) leaves an orphan,
    so when the parent is already someone else, ``sig`` is sent now. Without it the call
    is safe between fork and exec (a ``preexec_fn``): it only makes the prctl call."""
    if _PRCTL is None:
        return
    _PRCTL(_PR_SET_PDEATHSIG, sig)
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)
