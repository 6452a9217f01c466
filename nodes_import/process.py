"""Process-level helpers shared by the parent's children: the worker processes and the
local broker it may start."""

from __future__ import annotations

import ctypes
from typing import Any

# prctl option from <linux/prctl.h>: the signal a process gets when its parent dies.
_PR_SET_PDEATHSIG = 1

# Resolved at import, in the parent: a child between fork and exec must not load libraries.
try:
    _PRCTL: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: children then outlive their parent
    _PRCTL = None


def die_with_parent(sig: int) -> None:
    """Ask for ``sig`` when the parent process dies (Linux only; elsewhere nothing).

    Safe between fork and exec (a ``preexec_fn``): it only makes the prctl call."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, sig)
