"""The jobs page in a real headless browser (Debian's Chromium; the tests skip, saying so,
where it is not installed): the jobs of a real database through a real daemon's admin port,
a running job's progress moving between two loads, screenshots kept as test artefacts, and
hostile text shown as text (never run)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import orjson
import pytest

from nodes_import.cli.sample import write_users
from nodes_import.config import ImportConfig, RetryConfig
from nodes_import.daemon.admin import AdminApp, AdminServer
from nodes_import.jobs import ImportJob
from nodes_import.store import jobrows
from nodes_import.worker import engine
from tests.fixtures import browser
from tests.fixtures.daemon import Daemons
from tests.fixtures.http import free_port
from tests.fixtures.kafka import KafkaTest, wait_until
from tests.fixtures.postgres import Database

DOMAIN = "3f1c1a3e-2b9d-4c55-9a57-0d3c6a1f0b21"
# Would change the page if it ran: a script, an event handler, a broken-out attribute.
HOSTILE = ("<script>document.title='pwned'</script>\"'><img src=x "
           "onerror=\"document.body.setAttribute('data-pwned','1')\">")


class _Page(HTMLParser):
    """The rows of the jobs page: job id -> (status, percent); and the page's tags."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, str]] = {}
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self._row: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        self.tags.append((tag, named))
        if tag == "tr" and (named.get("id") or "").startswith("job-"):
            self._row = str(named["id"])[4:]
            self.rows[self._row] = {}
        elif self._row and tag == "span" and "data-percent" in named:
            self.rows[self._row]["percent"] = str(named["data-percent"])
        elif self._row and tag == "span" and (named.get("class") or "").startswith("s s-"):
            self.rows[self._row]["status"] = str(named["class"])[4:]


def _page(dom: str) -> _Page:
    page = _Page()
    page.feed(dom)
    return page


def _job_message(job_id: str, file: str) -> bytes:
    return orjson.dumps({"groupId": "browser", "domainId": DOMAIN, "file": file,
                         "jobId": job_id})


@pytest.mark.slow
def test_the_jobs_page_shows_the_jobs_of_the_database_and_a_running_jobs_progress_moves(
        daemons: Daemons, kafka: KafkaTest, db: Database, tmp_path: Path) -> None:
    browser.chromium()  # skip early, before starting anything, when there is none
    kafka.create_topic()
    port = free_port()
    # Small read blocks: progress is compressed bytes read, and with the default 1 MiB
    # blocks the reader's read-ahead takes a 4 MB file whole at the first batch.
    daemons.start(admin={"enabled": True, "port": port},
                  node={"import": {"batch": {"size": 500}, "block-size-bytes": 65536}})
    small, missing, big = (str(uuid.uuid4()) for _ in range(3))
    kafka.send(_job_message(small, str(write_users(tmp_path / "small.csv.gz", 2000))))
    kafka.send(_job_message(missing, str(tmp_path / "missing.csv.gz")))
    wait_until(lambda: db.scalar("SELECT count(*) FROM job_status WHERE status IN"
                                 " ('COMPLETED', 'FAILED')") == 2, 60, "two jobs finished")
    kafka.send(_job_message(big, str(write_users(tmp_path / "big.csv.gz", 300_000))))
    wait_until(lambda: db.scalar("SELECT coalesce(max(bytes_read), 0) FROM job_status"
                                 " WHERE id = %s", (big,)),
               60, "the big job's first batches")
    url = f"http://127.0.0.1:{port}/"
    first = _page(browser.dump_dom(url, tmp_path / "profile"))
    assert first.rows[small]["status"] == "COMPLETED"
    assert first.rows[missing]["status"] == "FAILED"
    assert first.rows[big]["status"] == "PROCESSING"
    before = float(first.rows[big]["percent"])
    assert 0 < before < 100

    def moved() -> float | None:
        row = _page(browser.dump_dom(url, tmp_path / "profile")).rows[big]
        return float(row["percent"]) if float(row["percent"]) > before else None

    after = wait_until(moved, 60, "the progress bar to move", every=0.5)
    assert after > before
    shots = tmp_path / "screenshots"
    shots.mkdir()
    listing = browser.screenshot(url, shots / "jobs-page.png", tmp_path / "profile")
    detail = browser.screenshot(f"{url}jobs/{big}", shots / "job-page.png",
                                tmp_path / "profile")
    for shot in (listing, detail):
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000
    print(f"\nscreenshots of the jobs page: {listing} {detail}")


def test_hostile_text_is_shown_as_text_and_nothing_of_it_runs_in_the_browser(
        db: Database, tmp_path: Path, gz_csv: Callable[..., Path]) -> None:
    browser.chromium()
    token = "browser-token"
    server = AdminServer(AdminApp(pool=db.pool, token=token), "127.0.0.1", 0)
    port = server.start()
    try:
        lines = ["reference_id,plan", "r1,free", f",{HOSTILE}"]
        path = gz_csv("\n".join(lines) + "\n", name="x<img src=y onerror=alert(1)>\"'.csv.gz")
        job = ImportJob(job_id=str(uuid.uuid4()), group_id=f"g{HOSTILE}", domain_id=DOMAIN,
                        source=str(path))
        cfg = ImportConfig(batch_size=100, allowed_roots=(str(tmp_path),),
                           retry=RetryConfig(max_attempts=1))
        assert engine.run_import(job, cfg, db.pool).status == "COMPLETED"
        pending = str(uuid.uuid4())
        with db.pool.connection() as conn:
            jobrows.create_job(conn, job_id=pending, group_id=HOSTILE, domain_id=DOMAIN,
                               node_type="USER", source=f"/data/{HOSTILE}")
        db.query("UPDATE job_status SET error = %s WHERE id = %s RETURNING 1",
                 (f"boom {HOSTILE}", pending))
        base = f"http://ops:{token}@127.0.0.1:{port}"  # the browser logs in (HTTP Basic)
        for path_ in ("/", f"/jobs/{job.job_id}", f"/jobs/{pending}"):
            dom = browser.dump_dom(base + path_, tmp_path / "profile")
            page = _page(dom)
            title = re.search(r"<title>(.*?)</title>", dom)
            assert title is not None and title.group(1) != "pwned", path_  # no script ran
            assert not any(tag in ("script", "img") for tag, _ in page.tags), path_
            assert not any(name.startswith("on") for _, attrs in page.tags for name in attrs)
            assert not any("data-pwned" in attrs for _, attrs in page.tags), path_
            assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in dom, path_
        job_dom = browser.dump_dom(f"{base}/jobs/{pending}", tmp_path / "profile")
        forms = [attrs for tag, attrs in _page(job_dom).tags if tag == "form"]
        assert forms and forms[0]["action"] == f"/jobs/{pending}/cancel"  # a token: a button
        browser.screenshot(f"{base}/jobs/{job.job_id}", tmp_path / "hostile.png",
                           tmp_path / "profile")
        print(f"\nscreenshot of a job page with hostile text: {tmp_path / 'hostile.png'}")
    finally:
        server.close()
