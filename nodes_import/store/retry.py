"""The retry policy (seed section 3.7): only ``TransientStorageError`` is retried.

The caller writes the loop and keeps its own code in its own frame; this module only
decides whether to try again and how long to wait::

    for attempt in retry.attempts(policy, context=ctx):
        with attempt, <a pooled connection> as conn:
            result = <a store function>(conn, ...)

1. each pass runs the block once; a ``TransientStorageError`` raised inside is logged,
   counted (``metrics.retry_attempt``) and tried again after an exponential backoff;
2. any other error leaves the loop at once, as it is;
3. once ``max-attempts`` passes failed, the last error leaves the loop, as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

from tenacity import (
    AttemptManager,
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from nodes_import import metrics
from nodes_import.config import RetryConfig
from nodes_import.errors import TransientStorageError

T = TypeVar("T")
log = logging.getLogger(__name__)


def retrying(policy: RetryConfig, *, context: Mapping[str, object] | None = None) -> Retrying:
    """A tenacity ``Retrying`` with exponential backoff from the configured keys."""

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        log.warning("retrying after transient error", extra={"fields": {
            **(context or {}), "attempt": state.attempt_number, "delayMs": int(delay * 1000),
            "error": str(exc)}})
        metrics.retry_attempt()

    return Retrying(
        stop=stop_after_attempt(policy.max_attempts),
        wait=wait_exponential(multiplier=policy.initial_interval_ms / 1000.0,
                              exp_base=policy.multiplier,
                              max=policy.max_interval_ms / 1000.0),
        retry=retry_if_exception_type(TransientStorageError),
        before_sleep=before_sleep,
        reraise=True,
    )


def attempts(policy: RetryConfig, *,
             context: Mapping[str, object] | None = None) -> Iterator[AttemptManager]:
    """The attempts of one operation under ``policy``, for the caller's own loop (see the
    module docstring); ``context`` goes into each "retrying" log line."""
    return iter(retrying(policy, context=context))


def call(policy: RetryConfig, fn: Callable[[], T], *,
         context: Mapping[str, object] | None = None) -> T:
    """Run ``fn`` under the policy; the last error is re-raised as is. For a plain
    function with nothing to hold between attempts; the engine writes the loop itself
    (``attempts``)."""
    for attempt in attempts(policy, context=context):
        with attempt:
            result = fn()
    return result
