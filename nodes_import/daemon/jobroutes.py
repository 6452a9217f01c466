"""The admin API's job routes (parent side): ``/jobs``, ``/jobs/{id}``,
``/jobs/{id}/rejects``, the jobs page for a browser, and ``POST /jobs/{id}/cancel``, the
one route that changes anything. ``AdminApp`` authorizes and routes; ``JobRoutes`` reads
the admin pool and answers (JSON, or the HTML of ``pages``)."""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict
from typing import Any

from nodes_import import metrics, status
from nodes_import.daemon import pages
from nodes_import.daemon.http import (
    JSON,
    MAX_LIMIT,
    Answer,
    HttpError,
    Query,
    form,
    integer,
    job_id,
    json_body,
    no_params,
    one,
)
from nodes_import.jobs import JobRow
from nodes_import.store import cancel, jobrows, rejects

log = logging.getLogger(__name__)

FAILURES_SHOWN = 20  # rejected rows in /jobs/{id}
# What the job page's cancel form posts (``form_key``): the token through this HMAC.
_FORM_KEY_CONTEXT = b"nodes-import cancel form"
# The largest row number /jobs/{id}/rejects?after= takes (job_failures.row_number BIGINT).
_MAX_ROW = 2**63 - 1

Connect = Callable[[], AbstractContextManager[Any]]  # a pooled connection, errors wrapped


def form_key(token: str) -> str:
    """What the job page's cancel form posts: derived from the token, good for nothing
    but a cancel (a saved page gives away no read access)."""
    return hmac.new(token.encode(), _FORM_KEY_CONTEXT, hashlib.sha256).hexdigest()


def with_progress(row: JobRow) -> dict[str, Any]:
    """The job's row as JSON fields, and its progress."""
    return {**asdict(row), "progress_percentage": metrics.progress_percentage(
        row.status, row.source_bytes, row.bytes_read)}


class JobRoutes:
    """The job routes over ``connect`` (the admin pool). ``token``: ``admin.token`` (None:
    no cancel); ``lease_ms``: a running job without a heartbeat this long is run by nobody
    (a cancel ends it at once)."""

    def __init__(self, connect: Connect, *, token: str | None, lease_ms: int) -> None:
        self.connect = connect
        self._token = token.encode() if token else None
        self._form_key = form_key(token) if token else None
        self.lease_ms = lease_ms

    def _recent(self, query: Query) -> tuple[list[JobRow], str | None, str | None, int]:
        """The jobs ``/jobs`` and ``/`` list: the most recent, of one status or group."""
        no_params(query, {"status", "group", "limit"})
        wanted = one(query, "status")
        if wanted is not None and wanted.upper() not in status.ALL:
            raise HttpError(400, f"status must be one of {', '.join(status.ALL)}, "
                                 f"got {wanted!r}")
        group = one(query, "group")
        limit = integer(query, "limit", 50)
        with self.connect() as conn:
            rows = jobrows.list_jobs(conn, status=wanted.upper() if wanted else None,
                                     limit=limit, group_id=group)
        return rows, wanted.upper() if wanted else None, group, limit

    def jobs(self, query: Query) -> Answer:
        """``/jobs``: the most recent jobs, optionally of one status or group."""
        rows, _, _, _ = self._recent(query)
        return 200, JSON, json_body([with_progress(row) for row in rows]), []

    def jobs_page(self, query: Query) -> Answer:
        """``/`` for a browser: the jobs page."""
        rows, wanted, group, limit = self._recent(query)
        return 200, pages.HTML, pages.jobs_page(rows, wanted_status=wanted, group=group,
                                                limit=limit), list(pages.SECURITY_HEADERS)

    def _job(self, raw_id: str, query: Query) -> tuple[JobRow, list[jobrows.RejectedRow]]:
        no_params(query, set())
        wanted = job_id(raw_id)
        with self.connect() as conn:
            row = jobrows.get_job(conn, wanted)
            if row is None:
                raise HttpError(404, f"no job {wanted}")
            return row, jobrows.job_failures(conn, wanted, limit=FAILURES_SHOWN)

    def job(self, raw_id: str, query: Query) -> Answer:
        """``/jobs/{id}``: one job and its first rejected rows."""
        row, failures = self._job(raw_id, query)
        return 200, JSON, json_body({**with_progress(row),
                                     "failures": [asdict(f) for f in failures]}), []

    def job_page(self, raw_id: str, query: Query) -> Answer:
        """``/jobs/{id}`` for a browser: the job's page (a cancel button with a token)."""
        row, failures = self._job(raw_id, query)
        return 200, pages.HTML, pages.job_page(row, failures, cancel_key=self._form_key), \
            list(pages.SECURITY_HEADERS)

    def rejects(self, raw_id: str, query: Query) -> Answer:
        """``/jobs/{id}/rejects?after=&limit=``: up to ``limit`` rejected rows numbered
        above ``after``, and the path of the next page (null after the last)."""
        wanted = job_id(raw_id)
        no_params(query, {"after", "limit"})
        after = integer(query, "after", 0, minimum=0, maximum=_MAX_ROW)
        limit = integer(query, "limit", MAX_LIMIT)
        with self.connect() as conn:
            if jobrows.get_job(conn, wanted) is None:
                raise HttpError(404, f"no job {wanted}")
            rows = rejects.page(conn, wanted, after=after, limit=limit)
        following = None
        if len(rows) == limit:
            following = f"/jobs/{wanted}/rejects?after={rows[-1].row_number}&limit={limit}"
        return 200, JSON, json_body({"job_id": wanted, "rejects": [asdict(r) for r in rows],
                                     "next": following}), []

    def cancel(self, environ: dict[str, Any], raw_id: str, browser: bool) -> Answer:
        """``POST /jobs/{id}/cancel`` (``store.cancel``). Refused without a configured
        token (403). Authorized by ``Authorization: Bearer <token>`` or the posted form's
        ``token`` (the token itself, or ``form_key``, what the job page's button posts); a
        browser's stored Basic login is not enough (a page of another site could make the
        browser send it). A form gets a redirect to the job's page; an API client the
        outcome and the row (409: the job was finished already)."""
        if self._token is None or self._form_key is None:
            raise HttpError(403, "cancelling needs admin.token: with no token configured "
                                 "the admin API changes nothing")
        wanted = job_id(raw_id)
        posted = form(environ)
        given = environ.get("HTTP_AUTHORIZATION", "").encode("latin-1", "replace")
        field = (posted.get("token") or [""])[0].encode()
        # constant time, and every comparison made whatever the first said
        checks = [hmac.compare_digest(given, b"Bearer " + self._token),
                  hmac.compare_digest(field, self._form_key.encode()),
                  hmac.compare_digest(field, self._token)]
        if not any(checks):
            raise HttpError(401, "cancelling needs the token: Authorization: Bearer <token>, "
                                 "or the form's token field")
        with self.connect() as conn:
            done = cancel.cancel_job(conn, wanted, lease_ms=self.lease_ms)
        if done is None:
            raise HttpError(404, f"no job {wanted}")
        log.info("job cancel asked for", extra={"fields": {
            "jobId": wanted, "outcome": done.outcome, "was": done.was}})
        if posted and browser:  # the page's button: back to the job's page
            return 303, pages.HTML, b"", [("Location", f"/jobs/{wanted}")]
        if done.outcome == cancel.FINISHED:
            raise HttpError(409, f"job {wanted} already finished ({done.row.status}); "
                                 "nothing to cancel")
        return 200, JSON, json_body({"outcome": done.outcome, "was": done.was,
                                     "job": with_progress(done.row)}), []
