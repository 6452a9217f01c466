"""Job states and the transitions between them (seed: PENDING -> PROCESSING -> COMPLETED/FAILED)."""

from __future__ import annotations

PENDING = "PENDING"
PROCESSING = "PROCESSING"
COMPLETED = "COMPLETED"
FAILED = "FAILED"

ALL = (PENDING, PROCESSING, COMPLETED, FAILED)
TERMINAL = frozenset({COMPLETED, FAILED})
# A PROCESSING job may be taken up again (a resumed or redelivered job).
TRANSITIONS: dict[str, frozenset[str]] = {
    PENDING: frozenset({PROCESSING, FAILED}),
    PROCESSING: frozenset({PROCESSING, COMPLETED, FAILED}),
    COMPLETED: frozenset(),
    FAILED: frozenset(),
}


def can_move(current: str, new: str) -> bool:
    """True when ``current -> new`` is an allowed transition."""
    return new in TRANSITIONS.get(current, frozenset())
