"""Job states (seed: PENDING -> PROCESSING -> COMPLETED/FAILED).

The transitions are enforced where they happen, in the SQL of ``jobrows``:
``start_job`` moves PENDING or PROCESSING (a resumed or redelivered job) to PROCESSING,
and FAILED too only for an explicit re-run (``import --retry-failed``); ``finish_job``
moves PENDING or PROCESSING to COMPLETED or FAILED, and nothing leaves those otherwise.
"""

from __future__ import annotations

PENDING = "PENDING"
PROCESSING = "PROCESSING"
COMPLETED = "COMPLETED"
FAILED = "FAILED"

ALL = (PENDING, PROCESSING, COMPLETED, FAILED)
TERMINAL = frozenset({COMPLETED, FAILED})
# Statuses a purge may delete: the terminal ones (a PENDING or PROCESSING job may still be
# running), in the order of ALL, which the CLI's --status choices show.
PURGEABLE = tuple(s for s in ALL if s in TERMINAL)
