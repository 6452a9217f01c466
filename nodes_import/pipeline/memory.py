"""Which allocator Arrow uses in this process: jemalloc, chosen by measurement.

pyarrow's default pool is mimalloc, which hands freed pages back to the kernel soon after
every batch and faults them in again for the next one. Reading and encoding 1M rows
(a fresh 35k-row batch of arrays each time) measured, three runs each:

    pool       user s      sys s        peak RSS MB
    mimalloc   0.73-0.83   0.07-0.37    201-230
    jemalloc   0.73-0.79   0.04-0.09    141-148
    system     0.75-0.82   0.06-0.10    154-182

jemalloc keeps the client's CPU low and steady and its memory the smallest. An operator's
``ARROW_DEFAULT_MEMORY_POOL`` still wins; a pyarrow built without jemalloc keeps its default.

Freed pages are kept for ``DECAY_MS`` before they go back to the kernel (Arrow's setting
returns them within about a second, while the next batch comes a fraction of a second
later and faults them in again). A 1M-row import, two runs each: 80-99k minor page faults
at Arrow's setting, 44-52k at 10 s (the rest is the first touch of the peak); peak RSS the
same (187-196 MB). An idle daemon worker still hands its memory back after 10 s.
"""

from __future__ import annotations

import os

import pyarrow as pa

DECAY_MS = 10_000


def use_jemalloc() -> str:
    """Make jemalloc this process's default Arrow pool; returns the pool in use."""
    if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        try:
            pa.set_memory_pool(pa.jemalloc_memory_pool())
            pa.jemalloc_set_decay_ms(DECAY_MS)
        except (NotImplementedError, pa.ArrowNotImplementedError):
            pass
    return str(pa.default_memory_pool().backend_name)
