"""The jobs page of the admin API (parent side): server-rendered HTML for a person with a
browser. Nothing comes from outside the process: no script, no CDN, no font; a meta
refresh reloads it. The admin API (``admin.py``) routes and authorizes; this module only
renders.

Everything shown that comes from a job is untrusted (group ids, file names, errors,
rejected lines, reference ids): every value goes through ``_e`` (``html.escape`` with
quotes), every attribute is double-quoted, every URL parameter is percent-encoded first.
The answers also carry a Content-Security-Policy that allows no script at all and no
framing (the cancel button cannot be clickjacked), as a second line of defence.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import datetime
from urllib.parse import quote, urlencode

from nodes_import import metrics, status
from nodes_import.jobs import JobRow
from nodes_import.store.jobrows import RejectedRow

HTML = "text/html; charset=utf-8"
# Headers of every page: no script may run, nothing may frame it, no type sniffing.
SECURITY_HEADERS = (
    ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; "
                                "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
)
# Seconds between reloads of a page that shows running jobs.
REFRESH_S = 5
# Characters of an error shown in the jobs list (the job's page shows it whole).
ERROR_CHARS = 200

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em}h1 a{color:inherit;text-decoration:none}
table{border-collapse:collapse;width:100%}
th,td{padding:.3em .5em;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.s{padding:.1em .4em;border-radius:3px;font-size:.85em;color:#fff;background:#777}
.s-COMPLETED{background:#2e7d32}.s-FAILED{background:#c62828}.s-PROCESSING{background:#1565c0}
.bar{width:8em;height:.8em;background:#eee;border-radius:3px;display:inline-block}
.bar span{display:block;height:100%;background:#1565c0;border-radius:3px}
.err{color:#c62828;word-break:break-word}.muted{color:#777}
code,pre{font:12px ui-monospace,monospace;white-space:pre-wrap;word-break:break-all;margin:0}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{color:#777}dd{margin:0}
form{margin:1em 0}button{background:#c62828;color:#fff;border:0;padding:.4em 1em}
"""


def _e(value: object) -> str:
    """``value`` as HTML text, safe in element content and in double-quoted attributes."""
    return html.escape("" if value is None else str(value), quote=True)


def _page(title: str, body: str, *, refresh_s: int | None) -> bytes:
    refresh = f'<meta http-equiv="refresh" content="{int(refresh_s)}">' if refresh_s else ""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{refresh}'
            f'<meta name="viewport" content="width=device-width">'
            f"<title>{_e(title)}</title><style>{_STYLE}</style></head>"
            f'<body><h1><a href="/">nodes-import jobs</a></h1>{body}</body></html>').encode()


def _time(value: datetime | None) -> str:
    return "" if value is None else f"{value:%Y-%m-%d %H:%M:%S}"


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    minutes, seconds = divmod(round(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes \
        else f"{seconds}s"


def _badge(row: JobRow) -> str:
    label = row.status
    if row.status == status.PROCESSING and row.cancel_requested_at is not None:
        label += " (cancelling)"
    return f'<span class="s s-{_e(row.status)}">{_e(label)}</span>'


def _bar(percent: float | None) -> str:
    if percent is None:
        return '<span class="muted">size unknown</span>'
    return (f'<span class="bar" title="{percent:.1f}%" data-percent="{percent:.2f}">'
            f'<span style="width:{percent:.1f}%"></span></span> {percent:.1f}%')


def _rate(p: metrics.JobProgress) -> str:
    return "" if p.rows_per_s is None else f"{p.rows_per_s:,.0f}"


def jobs_page(rows: Sequence[JobRow], *, wanted_status: str | None, group: str | None,
              limit: int) -> bytes:
    """``GET /``: the most recent jobs (``rows``), refreshed every ``REFRESH_S``."""
    links = " · ".join(
        f'<a href="/?{_e(urlencode({"status": s}))}">{_e(s)}</a>' for s in status.ALL)
    shown = [f"status {_e(wanted_status)}" if wanted_status else "",
             f"group {_e(group)}" if group else ""]
    filters = ", ".join(s for s in shown if s) or "all jobs"
    lines = []
    for row in rows:
        p = metrics.job_progress(row)
        error = row.error or ""
        cut = error[:ERROR_CHARS] + ("…" if len(error) > ERROR_CHARS else "")
        lines.append(
            f'<tr id="job-{_e(row.id)}"><td>{_badge(row)}</td>'
            f'<td><a href="/jobs/{quote(row.id, safe="")}" title="{_e(row.id)}">'
            f"<code>{_e(row.id[:8])}…</code></a>"
            f'<br><span class="muted">{_e(_time(row.created_at))}</span></td>'
            f'<td><a href="/?{_e(urlencode({"group": row.group_id}))}">{_e(row.group_id)}</a>'
            f'<br><span class="muted">{_e(row.source)}</span></td>'
            f"<td>{_bar(p.percent)}</td>"
            f'<td class="n">{_e(_rate(p))}</td>'
            f'<td class="n">{row.total_nodes:,}</td><td class="n">{row.success_count:,}</td>'
            f'<td class="n">{row.failed_count:,}</td>'
            f'<td class="n">{_e(_seconds(p.elapsed_s))}'
            f'{"<br>ETA " + _e(_seconds(p.eta_s)) if p.eta_s is not None else ""}</td>'
            f'<td class="err">{_e(cut)}</td></tr>')
    table = ("<table><thead><tr><th>status</th><th>job</th><th>group / source</th>"
             "<th>progress</th><th>rows/s</th><th>rows</th><th>imported</th><th>failed</th>"
             "<th>time</th><th>error</th></tr></thead><tbody>" + "".join(lines)
             + "</tbody></table>") if rows else '<p class="muted">No jobs.</p>'
    body = (f'<p>{filters}, the {limit} most recent (refreshed every {REFRESH_S} s) · '
            f'<a href="/">all</a> · {links}</p>{table}')
    return _page("nodes-import jobs", body, refresh_s=REFRESH_S)


def job_page(row: JobRow, failures: Sequence[RejectedRow], *, cancel_key: str | None) -> bytes:
    """``GET /jobs/{id}`` for a browser: the job, its first rejected rows, and a cancel
    button when the job is unfinished and a token is configured (``cancel_key``: what the
    form posts; None: no button). Refreshed while the job runs."""
    p = metrics.job_progress(row)
    fields = [
        ("status", _badge(row)), ("group", _e(row.group_id)), ("domain", _e(row.domain_id)),
        ("type", _e(row.node_type)), ("source", _e(row.source)),
        ("progress", _bar(p.percent)),
        ("rows", f"{row.total_nodes:,} ({row.success_count:,} imported: "
                 f"{row.inserted_count:,} inserted, {row.updated_count:,} updated, "
                 f"{row.unchanged_count:,} unchanged; {row.failed_count:,} failed)"),
        ("rows/s", _e(_rate(p))), ("elapsed", _e(_seconds(p.elapsed_s))),
        ("ETA", _e(_seconds(p.eta_s))), ("attempts", _e(row.attempts)),
        ("run by", _e(row.claimed_by)), ("created", _e(_time(row.created_at))),
        ("started", _e(_time(row.started_at))), ("finished", _e(_time(row.finished_at))),
        ("cancel requested", _e(_time(row.cancel_requested_at))),
        ("error", f'<span class="err">{_e(row.error)}</span>'),
    ]
    details = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in fields)
    form = ""
    if cancel_key is not None and row.status not in status.TERMINAL \
            and row.cancel_requested_at is None:
        form = (f'<form method="post" action="/jobs/{quote(row.id, safe="")}/cancel">'
                f'<input type="hidden" name="token" value="{_e(cancel_key)}">'
                "<button type=\"submit\">Cancel this job</button> "
                '<span class="muted">it stops at its next batch boundary, keeps what it '
                "committed and ends FAILED</span></form>")
    rejected = "".join(
        f'<tr><td class="n">{f.row_number:,}</td><td><code>{_e(f.reference_id)}</code></td>'
        f"<td>{_e(f.reason)}</td><td><pre>{_e(f.line)}</pre></td></tr>" for f in failures)
    rejects = (f"<h2>First rejected rows</h2><table><thead><tr><th>row</th>"
               "<th>reference_id</th><th>reason</th><th>line</th></tr></thead>"
               f"<tbody>{rejected}</tbody></table>"
               f'<p><a href="/jobs/{quote(row.id, safe="")}/rejects">every rejected row '
               "(JSON, paged)</a></p>") if failures else ""
    body = (f"<h2>job <code>{_e(row.id)}</code></h2>{form}<dl>{details}</dl>{rejects}")
    return _page(f"job {row.id}", body,
                 refresh_s=None if row.status in status.TERMINAL else REFRESH_S)


def error_page(code: int, message: str) -> bytes:
    """An error answer for a browser."""
    return _page(f"{code}", f'<p class="err">{code}: {_e(message)}</p>', refresh_s=None)
