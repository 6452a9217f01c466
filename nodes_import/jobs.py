"""What crosses the process boundary: ``ImportJob`` in, ``JobOutcome`` out. Primitives only."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from nodes_import import status
from nodes_import.redact import redact_uri

# The `source` recorded for jobs whose nodes come from a list of reference IDs.
REFERENCE_IDS_SOURCE = "reference-ids"
# A job of at most this many inline reference IDs may be written in a bundle with other
# small jobs (``bundle``): one statement and one commit for all of them.
BUNDLE_MAX_IDS = 1000
# Namespace for job ids derived from a message's (topic, partition, offset).
_JOB_NAMESPACE = uuid.UUID("6f1c1a3e-2b9d-4c55-9a57-0d3c6a1f0b21")


@dataclass(frozen=True)
class ImportJob:
    """One import to run: where the nodes come from and whose they are.

    Exactly one of ``source`` (a file path or URI: the cost-based path) and
    ``reference_ids`` (the non-cost-based path) is set. ``reference_ids_file`` is a
    file of IDs, one per line, a path or URI (the CLI's ``--reference-ids FILE``, the
    message's ``referenceIdsFile``).
    """

    job_id: str
    group_id: str
    domain_id: str
    node_type: str = "USER"
    source: str | None = None
    reference_ids: tuple[str, ...] | None = None
    reference_ids_file: str | None = None
    claimed_by: str | None = None
    # Take a FAILED job up again from its checkpoint (an operator's explicit re-run).
    resume_failed: bool = False
    # False (the daemon): a job whose database went away is left PROCESSING, not FAILED;
    # the daemon's circuit breaker resumes it from its checkpoint once the database answers.
    fail_on_outage: bool = True

    @property
    def source_label(self) -> str:
        """What ``job_status.source`` records (a URI's password and query masked: a
        pre-signed URL's signature is a credential)."""
        return redact_uri(self.source) if self.source else REFERENCE_IDS_SOURCE

    @property
    def small(self) -> bool:
        """A short inline list of reference IDs, not a re-run: may go in a bundle."""
        return (self.reference_ids is not None and len(self.reference_ids) <= BUNDLE_MAX_IDS
                and not self.resume_failed)


@dataclass(frozen=True)
class JobRow:
    """A job's ``job_status`` row: one field per column read (``store.jobrows.JOB_COLUMNS``
    is derived from these fields, in this order). The UUID columns are read as text."""

    id: str
    group_id: str
    domain_id: str
    status: str
    node_type: str
    source: str
    total_nodes: int
    success_count: int
    failed_count: int
    inserted_count: int
    updated_count: int
    unchanged_count: int
    rows_committed: int
    error: str | None
    attempts: int
    source_bytes: int | None  # the file's size; None for a list of reference IDs
    bytes_read: int
    claimed_by: str | None  # the daemon (host:pid) that holds or last held the job
    created_at: datetime | None
    updated_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    # When a cancel was asked for (``jobs cancel``); None: never, or cleared by a re-run.
    cancel_requested_at: datetime | None = None


class Ending(StrEnum):
    """How one run of a job ended, as the runner saw it: what the daemon decides on."""

    COMPLETED = "completed"  # the job row is COMPLETED
    FAILED = "failed"  # the job row is FAILED (dead-lettered by the daemon)
    OUTAGE = "outage"  # the database link went away: resumes from its checkpoint later
    LEASE_LOST = "lease-lost"  # another runner owns the job now; its end is theirs
    STOPPED = "stopped"  # interrupted by the stop order: resumes on the next start
    NOT_STARTED = "not-started"  # could not start (or record its crash): tried again later

    @property
    def terminal(self) -> bool:
        """The job row is COMPLETED or FAILED: this job is over."""
        return self in (Ending.COMPLETED, Ending.FAILED)


@dataclass(frozen=True)
class JobOutcome:
    """How a job ended, as the worker saw it (the database row is the truth).

    ``ending`` says how this run ended; ``status`` is the job row's status as this runner
    last saw it (PENDING or PROCESSING when the run did not end the job); ``row`` is the
    row as it last read it (None: not read, or gone).
    """

    job_id: str
    status: str
    error: str | None = None
    row: JobRow | None = None
    # Set when an exception ended the job in the worker: its class (``errors.type_name``)
    # and stack trace (the dead letter's error headers).
    error_type: str | None = None
    stack_trace: str | None = None
    ending: Ending = field(kw_only=True)

    @classmethod
    def ended(cls, job_id: str, row: JobRow | None, error: str | None = None, *,
              missing: str, **fields: Any) -> JobOutcome:
        """The outcome of a run that left the job ``row`` COMPLETED or FAILED (a row
        that is not COMPLETED counts as FAILED; with no row, ``missing`` counts)."""
        seen = missing if row is None else row.status
        final = status.COMPLETED if seen == status.COMPLETED else status.FAILED
        ending = Ending.COMPLETED if final == status.COMPLETED else Ending.FAILED
        return cls(job_id, final, error, row, ending=ending, **fields)


def new_job_id() -> str:
    """A fresh random job id."""
    return str(uuid.uuid4())


def derived_job_id(topic: str, partition: int, offset: int) -> str:
    """The deterministic job id of a message that carries none."""
    return str(uuid.uuid5(_JOB_NAMESPACE, f"{topic}/{partition}/{offset}"))
