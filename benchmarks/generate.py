"""Question: what does the benchmark data look like? Deterministic GZIP CSV inputs.

Rows are shaped like production exports (the ones ../shared/notes/performance.md was
measured with): ``reference_id`` in shuffled order plus 5 metadata columns, ~115 bytes a
row, ~27% gzip ratio. The same ``seed`` always gives the same bytes, so two runs (or two
machines) load the same data.

Variants (``VARIANTS``), all over the same keys 0..rows-1 unless noted:
- ``new``:        every row a new node (the fresh import),
- ``same``:       byte-identical to ``new`` (the unchanged re-import reuses that file),
- ``changed10``:  every 10th row's plan changed (tag ``v2``),
- ``changed100``: every row's plan changed (tag ``v3``; differs from ``new`` AND ``changed10``),
- ``bad1``:       1% of rows with a blank reference_id (rejected, counted as failed),
- ``dups``:       every 5th row repeats the previous row's key (the last occurrence wins),
- ``ids``:        a reference-ID list, one per line, keys ``rows..2*rows-1`` (new nodes).

Used by ``benchmarks/run.py``; also runnable: ``python -m benchmarks.generate OUT.csv.gz
--rows 1000000 --variant changed10``.
"""

from __future__ import annotations

import argparse
import gzip
import random
from dataclasses import dataclass
from pathlib import Path

HEADER = "reference_id,email,first_name,last_name,country,plan\n"
_FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia",
          "Tim", "Margaret", "Niklaus", "Leslie", "Anita", "Dennis", "Hedy", "Jean", "Katherine",
          "Sophie", "John", "Mary", "Claude", "Carol", "Ivan"]
_LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson",
         "Perlman", "Berners-Lee", "Hamilton", "Wirth", "Lamport", "Borg", "Ritchie", "Lamarr",
         "Sammet", "Johnson", "Wilson", "Backus", "Keller", "Shannon", "Shaw", "Sutherland"]
_DOMAINS = ["mail.example-company.com", "accounts.example-university.org",
            "corp.example-industries.net", "users.example-cloud-services.io"]
_COUNTRIES = ["Germany", "France", "United States", "United Kingdom", "India", "Brazil",
              "Japan", "Nigeria", "Sweden", "Canada", "Spain", "Australia"]
_PLANS = ["free", "professional-monthly", "team-annual", "enterprise-annual"]
# Rows formatted per write: bounds memory and keeps the per-row Python overhead small.
_CHUNK = 50_000
# Bumped whenever the bytes a (variant, rows, seed) produces change: cached files are
# named with it, so a stale cache is never reused.
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Variant:
    """How a file differs from the all-new base file."""

    changed_every: int = 0
    change_tag: str = ""
    bad_every: int = 0
    duplicate_every: int = 0
    ids: bool = False


VARIANTS = {
    "new": Variant(),
    "changed10": Variant(changed_every=10, change_tag="v2"),
    "changed100": Variant(changed_every=1, change_tag="v3"),
    "bad1": Variant(bad_every=100),
    "dups": Variant(duplicate_every=5),
    "ids": Variant(ids=True),
}


def reference_id(n: int) -> str:
    """The n-th key: a fixed-width external id with a hashed suffix (like real exports)."""
    return f"ext-{n:010d}-{(n * 2654435761) & 0xFFFFFFFF:08x}"


def _user_line(n: int, plan_tag: str, ref: str) -> str:
    first, last = _FIRST[n % 24], _LAST[(n // 24) % 24]
    plan = _PLANS[n % 4] + (f"-{plan_tag}" if plan_tag else "")
    return (f"{ref},{first.lower()}.{last.lower()}.{n}@{_DOMAINS[n % 4]},{first},{last},"
            f"{_COUNTRIES[n % 12]},{plan}\n")


def write_users(path: Path, rows: int, variant: Variant, *, seed: int = 42,
                compresslevel: int = 6) -> Path:
    """Write ``rows`` users (keys 0..rows-1 in a seeded shuffle) as GZIP CSV."""
    order = list(range(rows))
    random.Random(seed).shuffle(order)
    v = variant
    with gzip.open(path, "wt", encoding="utf-8", newline="", compresslevel=compresslevel) as out:
        out.write(HEADER)
        for offset in range(0, rows, _CHUNK):
            lines = []
            for i in range(offset, min(offset + _CHUNK, rows)):
                n = order[i]
                tag = v.change_tag if v.changed_every and i % v.changed_every == 0 else ""
                ref = reference_id(n)
                if v.bad_every and i % v.bad_every == 1:
                    ref = ""
                elif v.duplicate_every and i % v.duplicate_every == 2:
                    ref = reference_id(order[i - 1])
                lines.append(_user_line(n, tag, ref))
            out.write("".join(lines))
    return path


def write_ids(path: Path, rows: int, *, seed: int = 42, compresslevel: int = 6) -> Path:
    """Write ``rows`` reference IDs (keys rows..2*rows-1, shuffled), one per line, gzipped."""
    order = list(range(rows, 2 * rows))
    random.Random(seed).shuffle(order)
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=compresslevel) as out:
        for offset in range(0, rows, _CHUNK):
            out.write("".join(reference_id(n) + "\n" for n in order[offset:offset + _CHUNK]))
    return path


def ensure(data_dir: Path, variant: str, rows: int, *, seed: int = 42) -> Path:
    """The cached file for (variant, rows, seed), written first if missing."""
    data_dir.mkdir(parents=True, exist_ok=True)
    suffix = "txt.gz" if VARIANTS[variant].ids else "csv.gz"
    path = data_dir / f"v{FORMAT_VERSION}-{variant}-{rows}-s{seed}.{suffix}"
    if not path.exists():
        tmp = path.with_name(path.name + ".part")
        if VARIANTS[variant].ids:
            write_ids(tmp, rows, seed=seed)
        else:
            write_users(tmp, rows, VARIANTS[variant], seed=seed)
        tmp.rename(path)
    return path


def main() -> None:
    """Command line: write one variant to OUT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="new")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    if VARIANTS[args.variant].ids:
        write_ids(args.out, args.rows, seed=args.seed)
    else:
        write_users(args.out, args.rows, VARIANTS[args.variant], seed=args.seed)


if __name__ == "__main__":
    main()
