"""The admin API's job routes added by issue 16, on a real socket and a real database: the
cancel route behind the token, rejected rows a page at a time, the jobs page for a
browser (content negotiation, Basic login, the cancel form), and escaping of everything a
job brings (group ids, file names, errors, rejected lines)."""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from nodes_import.config import ImportConfig, RetryConfig
from nodes_import.daemon.admin import AdminApp, AdminServer
from nodes_import.daemon.jobroutes import form_key
from nodes_import.jobs import ImportJob
from nodes_import.store import jobrows
from nodes_import.worker import engine
from tests.fixtures.http import request
from tests.fixtures.postgres import Database

DOMAIN = "3f1c1a3e-2b9d-4c55-9a57-0d3c6a1f0b21"
TOKEN = "s3cret-token"
BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
BEARER = {"Authorization": f"Bearer {TOKEN}"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
# Untrusted text that would break out of an element or an attribute if not escaped.
HOSTILE = "<script>alert(1)</script>\"'><img src=x onerror=alert(2)>&amp;"


@pytest.fixture()
def served(db: Database) -> Iterator[Callable[..., int]]:
    """Start the admin API on the test's database (with or without a token)."""
    servers: list[AdminServer] = []

    def start(token: str | None = None) -> int:
        server = AdminServer(AdminApp(pool=db.pool, token=token), "127.0.0.1", 0)
        servers.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in servers:
            server.close()


def _pending(db: Database, group: str = "adm", source: str = "f.csv.gz") -> str:
    job_id = str(uuid.uuid4())
    with db.pool.connection() as conn:
        jobrows.create_job(conn, job_id=job_id, group_id=group, domain_id=DOMAIN,
                           node_type="USER", source=source)
    return job_id


def _processing(db: Database) -> str:
    job_id = str(uuid.uuid4())
    with db.pool.connection() as conn:
        jobrows.begin_job(conn, ImportJob(job_id=job_id, group_id="adm", domain_id=DOMAIN,
                                          source="f.csv.gz"), partitions=1, source_bytes=1000)
    return job_id


def _imported(db: Database, tmp_path: Path, gz_csv: Callable[..., Path], *,
              group: str = "adm", rejected: int = 3, name: str | None = None) -> str:
    lines = ["reference_id,plan"] + [f"r{n},free" for n in range(10)] + \
        [f",{HOSTILE}{n}" for n in range(rejected)]
    path = gz_csv("\n".join(lines) + "\n", name=name)
    job = ImportJob(job_id=str(uuid.uuid4()), group_id=group, domain_id=DOMAIN,
                    source=str(path))
    cfg = ImportConfig(batch_size=1000, allowed_roots=(str(tmp_path),),
                       retry=RetryConfig(max_attempts=2, initial_interval_ms=10))
    assert engine.run_import(job, cfg, db.pool).status == "COMPLETED"
    return job.job_id


def test_cancel_is_refused_without_a_configured_token(served: Callable[..., int],
                                                      db: Database) -> None:
    port = served()
    job_id = _pending(db)
    answer = request(port, f"/jobs/{job_id}/cancel", method="POST")
    assert answer.status == 403 and "needs admin.token" in answer.json()["error"]
    assert db.scalar("SELECT status FROM job_status") == "PENDING"


def test_cancel_needs_the_token_and_answers_what_it_did(served: Callable[..., int],
                                                        db: Database) -> None:
    port = served(TOKEN)
    pending, running = _pending(db), _processing(db)
    for headers in ({}, {"Authorization": "Bearer wrong"},
                    {"Authorization": "Basic " + base64.b64encode(
                        f"ops:{TOKEN}".encode()).decode()}):  # a stored login is not enough
        refused = request(port, f"/jobs/{pending}/cancel", method="POST", headers=headers)
        assert refused.status == 401, headers
    answer = request(port, f"/jobs/{pending}/cancel", method="POST", headers=BEARER)
    assert answer.status == 200
    body = answer.json()
    assert (body["outcome"], body["was"]) == ("cancelled", "PENDING")
    assert (body["job"]["status"], body["job"]["error"]) == ("FAILED", "Cancelled")
    asked = request(port, f"/jobs/{running}/cancel", method="POST", headers=BEARER).json()
    assert (asked["outcome"], asked["job"]["status"]) == ("requested", "PROCESSING")
    again = request(port, f"/jobs/{pending}/cancel", method="POST", headers=BEARER)
    assert again.status == 409 and "already finished (FAILED)" in again.json()["error"]
    assert request(port, f"/jobs/{uuid.uuid4()}/cancel", method="POST",
                   headers=BEARER).status == 404
    assert request(port, "/jobs/nope/cancel", method="POST", headers=BEARER).status == 400
    wrong_method = request(port, f"/jobs/{running}/cancel", headers=BEARER)
    assert (wrong_method.status, wrong_method.headers["Allow"]) == (405, "POST")


def test_the_job_page_has_a_cancel_form_only_with_a_token_and_the_form_cancels(
        served: Callable[..., int], db: Database) -> None:
    open_port, port = served(), served(TOKEN)
    job_id = _processing(db)
    page = request(open_port, f"/jobs/{job_id}", headers=BROWSER)
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "<form" not in page.body.decode()  # no token, no button
    login = {**BROWSER, "Authorization": "Basic " + base64.b64encode(
        f"anyone:{TOKEN}".encode()).decode()}
    page = request(port, f"/jobs/{job_id}", headers=login)
    html = page.body.decode()
    assert f'action="/jobs/{job_id}/cancel"' in html
    assert form_key(TOKEN) in html and TOKEN not in html  # a key that can only cancel
    assert "script-src" not in page.headers["Content-Security-Policy"]  # default-src 'none'
    assert page.headers["X-Frame-Options"] == "DENY"
    posted = request(port, f"/jobs/{job_id}/cancel", method="POST",
                     headers={**login, **FORM},
                     data=f"token={form_key(TOKEN)}".encode(), follow=False)
    assert (posted.status, posted.headers["Location"]) == (303, f"/jobs/{job_id}")
    assert db.scalar("SELECT cancel_requested_at IS NOT NULL FROM job_status")
    after = request(port, f"/jobs/{job_id}", headers=login).body.decode()
    assert "(cancelling)" in after and "<form" not in after


def test_a_browser_without_the_token_is_asked_to_log_in(served: Callable[..., int]) -> None:
    port = served(TOKEN)
    refused = request(port, "/", headers=BROWSER)
    assert refused.status == 401
    assert refused.headers["WWW-Authenticate"].startswith("Basic")
    assert request(port, "/jobs").headers["WWW-Authenticate"].startswith("Bearer")


def test_json_stays_the_default_and_slash_is_the_page_for_a_browser(
        served: Callable[..., int], db: Database, tmp_path: Path,
        gz_csv: Callable[..., Path]) -> None:
    port = served()
    job_id = _imported(db, tmp_path, gz_csv)
    assert request(port, f"/jobs/{job_id}").json()["id"] == job_id
    assert request(port, f"/jobs/{job_id}", headers={"Accept": "*/*"}).json()["id"] == job_id
    assert request(port, f"/jobs/{job_id}", headers={
        "Accept": "application/json, text/html;q=0.5"}).json()["id"] == job_id
    assert request(port, "/").status == 404  # API clients: no such path
    page = request(port, "/", headers=BROWSER)
    assert page.status == 200 and job_id in page.body.decode()
    assert '<meta http-equiv="refresh"' in page.body.decode()
    assert request(port, "/?group=nobody", headers=BROWSER).body.decode().count(job_id) == 0
    assert request(port, "/jobs?group=adm").json()[0]["id"] == job_id
    assert request(port, "/jobs?group=nobody").json() == []


def test_rejected_rows_come_a_page_at_a_time(served: Callable[..., int], db: Database,
                                             tmp_path: Path,
                                             gz_csv: Callable[..., Path]) -> None:
    port = served()
    job_id = _imported(db, tmp_path, gz_csv, rejected=5)
    first = request(port, f"/jobs/{job_id}/rejects?limit=2").json()
    assert [r["row_number"] for r in first["rejects"]] == [11, 12]
    assert first["next"] == f"/jobs/{job_id}/rejects?after=12&limit=2"
    seen = [r["row_number"] for r in first["rejects"]]
    following = first["next"]
    while following:
        page = request(port, following).json()
        seen += [r["row_number"] for r in page["rejects"]]
        following = page["next"]
    assert seen == [11, 12, 13, 14, 15]
    row = request(port, f"/jobs/{job_id}/rejects").json()["rejects"][0]
    assert set(row) == {"row_number", "reference_id", "reason", "line"}
    assert request(port, f"/jobs/{uuid.uuid4()}/rejects").status == 404
    assert request(port, f"/jobs/{job_id}/rejects?after=-1").status == 400
    assert request(port, f"/jobs/{job_id}/rejects?page=2").status == 400


class _Text(HTMLParser):
    """The text of a page, and the elements and attributes it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes += attrs

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parsed(body: bytes) -> _Text:
    parser = _Text()
    parser.feed(body.decode())
    return parser


def test_group_ids_file_names_errors_and_rejected_lines_are_shown_as_text(
        served: Callable[..., int], db: Database, tmp_path: Path,
        gz_csv: Callable[..., Path]) -> None:
    port = served(TOKEN)
    login = {**BROWSER, "Authorization": f"Bearer {TOKEN}"}
    hostile_name = "x<script>alert(3)<\\script>\"'.csv.gz".replace("\\", "")
    job_id = _imported(db, tmp_path, gz_csv, group=f"g{HOSTILE}", name=hostile_name)
    failed = _pending(db, group=HOSTILE, source=f"/data/{HOSTILE}.csv")
    db.query("UPDATE job_status SET status = 'FAILED', error = %s WHERE id = %s RETURNING 1",
             (f"boom {HOSTILE}", failed))
    for path in ("/", f"/jobs/{job_id}", f"/jobs/{failed}"):
        body = request(port, path, headers=login).body
        page = _parsed(body)
        assert "script" not in page.tags and "img" not in page.tags, path
        assert not any(name.startswith("on") for name, _ in page.attributes), path
        assert b"<script>" not in body and b"<img" not in body, path
        text = "".join(page.text)
        assert HOSTILE in text or f"g{HOSTILE}" in text, path  # shown, as text
    job_text = "".join(_parsed(request(port, f"/jobs/{job_id}", headers=login).body).text)
    assert f"g{HOSTILE}" in job_text and hostile_name in job_text
    line = db.scalar("SELECT line FROM job_failures ORDER BY row_number LIMIT 1")
    assert "<script>" in line and line in job_text  # a rejected line, as stored
    listed = "".join(_parsed(request(port, "/", headers=login).body).text)
    assert f"boom {HOSTILE}" in listed and f"/data/{HOSTILE}.csv" in listed
    links = [v for k, v in _parsed(request(port, "/", headers=login).body).attributes
             if k == "href"]
    assert all(re.fullmatch(r"/[\w/?=&%.+-]*", link or "") for link in links), links
