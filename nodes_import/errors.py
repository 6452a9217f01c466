"""The one exception tree of nodes-import, and the one way to name an exception's type.

Third-party errors are wrapped where they happen (``raise ... from exc``) so callers
only ever branch on these classes:

- ``PayloadError``: the message or the file is bad. The job is FAILED and dead-lettered;
  never retried.
- ``TransientStorageError``: a deadlock, a serialization failure, a timeout; its
  subclass ``ConnectionLostError``: the database link itself went away. The only
  classes the retry policy retries.
- ``StorageError``: any other database failure (a data error): not retried.
"""

from __future__ import annotations


class NodesImportError(Exception):
    """Base of every error nodes-import raises on purpose."""


class ConfigError(NodesImportError):
    """The configuration is invalid: unknown key, wrong type, missing value."""


class PayloadError(NodesImportError):
    """A message or a source file cannot be imported as given (never retried)."""


class SourceError(PayloadError):
    """The source file cannot be opened or read (missing, refused, corrupt, too big)."""


class SourceRefusedError(SourceError):
    """The source is outside what may be read: a local path outside
    ``node.import.allowed-roots``, a URI (or a redirect) outside ``node.import.allowed-uris``.
    Refused before any read or request."""


class SourceChangedError(SourceError):
    """A remote file was replaced while it was read (its ETag or Last-Modified changed, or
    the server refused the resume's precondition): the job fails rather than mix two
    versions of the file."""


class StorageError(NodesImportError):
    """A database operation failed."""


class TransientStorageError(StorageError):
    """A database failure that may succeed when tried again (connection, deadlock...)."""


class ConnectionLostError(TransientStorageError):
    """The database link itself failed, not the data: refused, reset, stalled, the server
    shutting down or out of connection slots. Raised where the link fails (``classify``,
    the watchdog, ``open_pool``); the breaker and the engine check it with isinstance."""


class LeaseLostError(StorageError):
    """Another daemon took the job over (``claimed_by`` changed): this runner's batch was
    rolled back and it must stop without ending the job. Never retried."""


class JobTimeoutError(NodesImportError):
    """The job ran past ``node.import.global.timeout.ms``."""


class JobRejectedError(NodesImportError):
    """The job rejected more rows than ``node.import.max-reject-ratio`` allows."""


class JobCancelledError(NodesImportError):
    """An operator cancelled the job (``jobs cancel``): it stopped at a batch boundary."""


# The error a cancelled job ends FAILED with (job_status.error), wherever it was stopped.
CANCELLED_MESSAGE = "Cancelled"


class BrokerError(NodesImportError):
    """Kafka could not be reached or refused an operation."""


class OverloadedError(NodesImportError):
    """The daemon's in-flight window is full and ``node.import.backpressure`` is reject."""


class WorkerDiedError(NodesImportError):
    """The worker process running a job died (killed, out of memory) too many times."""


def type_name(exc: BaseException) -> str:
    """``module.QualName`` of an exception: the one format of every ``error_type`` (the
    job outcome, the dead letter's class header)."""
    return f"{type(exc).__module__}.{type(exc).__qualname__}"
