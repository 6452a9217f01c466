"""Deterministic sample data: GZIP CSV files of users and reference-ID lists.

Used by ``bin/demo``, the tests and the benchmarks. Rows look like production data:
``reference_id`` in shuffled order plus 5 metadata columns, ~120 bytes a row.
"""

from __future__ import annotations

import gzip
import random
from pathlib import Path

HEADER = ["reference_id", "email", "first_name", "last_name", "country", "plan"]
# The sample users' values (the soak's stream draws from the same lists).
FIRST_NAMES = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia",
          "Tim", "Margaret", "Niklaus", "Leslie", "Anita", "Dennis", "Hedy"]
LAST_NAMES = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson",
         "Perlman", "Berners-Lee", "Hamilton", "Wirth", "Lamport", "Borg", "Ritchie", "Lamarr"]
COUNTRIES = ["DE", "FR", "US", "GB", "IN", "BR", "JP", "NG", "SE", "CA"]
PLANS = ["free", "pro", "team", "enterprise"]
# Rows generated per write: bounds memory, keeps the Python overhead per row small.
_CHUNK = 50_000


def reference_id(n: int) -> str:
    """The n-th sample reference ID."""
    return f"user-{n:09d}"


def write_users(path: str | Path, rows: int, *, seed: int = 42, start: int = 0,
                changed_every: int = 0, bad_every: int = 0, duplicate_every: int = 0) -> Path:
    """Write ``rows`` users as GZIP CSV; variants change, break or repeat some rows."""
    rng = random.Random(seed)
    order = list(range(start, start + rows))
    rng.shuffle(order)
    path = Path(path)
    with gzip.open(path, "wt", encoding="utf-8", newline="", compresslevel=6) as out:
        out.write(",".join(HEADER) + "\n")
        for offset in range(0, rows, _CHUNK):
            lines = []
            for i in range(offset, min(offset + _CHUNK, rows)):
                n = order[i]
                first, last = FIRST_NAMES[n % 16], LAST_NAMES[(n // 16) % 16]
                plan = PLANS[n % 4]
                if changed_every and i % changed_every == 0:
                    plan = plan + "-changed"
                ref = reference_id(n)
                if bad_every and i % bad_every == 1:
                    ref = ""
                if duplicate_every and i % duplicate_every == 2 and i > 2:
                    ref = reference_id(order[i - 1])
                lines.append(f"{ref},{first.lower()}.{last.lower()}.{n}@example.com,"
                             f"{first},{last},{COUNTRIES[n % 10]},{plan}\n")
            out.write("".join(lines))
    return path


def write_reference_ids(path: str | Path, count: int, *, start: int = 0) -> Path:
    """Write ``count`` reference IDs, one per line, gzipped when the name ends in .gz."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as out:
        for offset in range(start, start + count, _CHUNK):
            end = min(offset + _CHUNK, start + count)
            out.write("".join(reference_id(n) + "\n" for n in range(offset, end)))
    return path
