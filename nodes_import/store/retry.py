"""The retry policy (seed section 3.7): only ``TransientStorageError`` is retried."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from tenacity import (
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


def retrying(policy: RetryConfig, *, context: dict[str, object] | None = None,
             on_retry: Callable[[int], None] | None = None) -> Retrying:
    """A tenacity ``Retrying`` with exponential backoff from the configured keys."""

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        log.warning("retrying after transient error", extra={"fields": {
            **(context or {}), "attempt": state.attempt_number, "delayMs": int(delay * 1000),
            "error": str(exc)}})
        metrics.retry_attempt()
        if on_retry is not None:
            on_retry(state.attempt_number)

    return Retrying(
        stop=stop_after_attempt(policy.max_attempts),
        wait=wait_exponential(multiplier=policy.initial_interval_ms / 1000.0,
                              exp_base=policy.multiplier,
                              max=policy.max_interval_ms / 1000.0),
        retry=retry_if_exception_type(TransientStorageError),
        before_sleep=before_sleep,
        reraise=True,
    )


def call(policy: RetryConfig, fn: Callable[[], T], **kwargs: object) -> T:
    """Run ``fn`` under the policy; the last error is re-raised as is."""
    return retrying(policy, **kwargs)(fn)  # type: ignore[arg-type]
