"""How the workers are shared between large and small jobs (parent side): a pure decision.

A large job (a file, or a long list of reference IDs) holds its worker for seconds to
minutes, and a worker cannot leave a job half-way; a small job (``ImportJob.small``: at
most ``BUNDLE_MAX_IDS`` inline IDs) takes milliseconds. Handed to the pool first come,
first served, a small job that arrives while every worker holds a large one waits until
one of those ends: p95 46 s from produce to COMPLETED (issue 17). So the workers form two
lanes (``node.import.executor.small-job-workers``):

- a large job starts only while fewer than ``large_max`` (max-pool-size minus the small
  jobs' workers, at least 1) large calls run, and a worker is free;
- small jobs take any free worker (a burst uses them all), in bundles;
- large jobs first within their share, so a stream of small jobs never starves them,
  and small jobs always have their reserved workers.

The daemon holds the jobs that wait for a worker (``window.QUEUED``), never the process
pool, so a job can only wait behind jobs of its own lane. ``plan`` says how many calls of
each lane start now; ``dispatch.Dispatcher.pump`` starts them. No I/O, no clock:
unit-tested without processes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Lanes:
    """``workers`` worker processes, ``small_only`` of them never given a large job."""

    workers: int
    small_only: int

    @property
    def large_max(self) -> int:
        """Large calls that may run at once (at least 1: one worker is no lane to share)."""
        return max(1, self.workers - self.small_only)


@dataclass(frozen=True)
class Starts:
    """Worker calls to start now: ``large`` jobs (one call each), ``small`` calls (a
    bundle of small jobs, or a small job alone)."""

    large: int
    small: int


def plan(lanes: Lanes, *, running_large: int, running_small: int, queued_large: int,
         queued_small: int) -> Starts:
    """The calls to start, given the calls running and the jobs waiting in each lane
    (``queued_small``: small jobs, the most calls they could make)."""
    free = max(0, lanes.workers - running_large - running_small)
    large = max(0, min(queued_large, lanes.large_max - running_large, free))
    small = max(0, min(queued_small, free - large))
    return Starts(large=large, small=small)
