"""The metrics module: one declaration per metric, and what the helpers record."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nodes_import import metrics
from tests.fixtures.http import samples, total
from tests.fixtures.promtool import check_metrics

# Every metric issue 4 (and the seed's sections 3.9 and 7) names, by the seed's names.
NAMED = {"kafka_consumer_messages_received", "kafka_consumer_messages_processed",
         "kafka_consumer_errors", "node_import_jobs_started", "node_import_jobs_completed",
         "node_import_jobs_failed", "node_import_batch_duration",
         "node_import_batches_processed", "node_import_batch_failures",
         "node_import_total_duration", "node_import_metadata_duration", "node_import_success",
         "node_import_failures", "node_import_conflict_updates", "node_import_errors",
         "executor_queue_size", "executor_active_threads", "job_progress_percentage"}


def test_every_named_metric_is_declared_once_with_a_meaning() -> None:
    names = [spec.name for spec in metrics.SPECS]
    assert len(names) == len(set(names))
    assert {spec.seed or spec.name for spec in metrics.SPECS} >= NAMED
    for spec in metrics.SPECS:
        assert spec.kind in ("counter", "histogram", "gauge") and spec.help, spec.name
        assert spec.side in ("worker", "parent", "scrape"), spec.name
        if spec.kind == "histogram":
            assert list(spec.buckets) == sorted(spec.buckets) and len(spec.buckets) >= 8
        if spec.side == "scrape":
            assert spec.kind == "gauge", spec.name


def test_names_follow_prometheus_conventions_as_micrometer_renders_the_seed() -> None:
    for spec in metrics.SPECS:
        # the application prefix; the consumer's families keep the seed's names
        assert spec.name.startswith(("node_import_", "kafka_consumer_")), spec.name
        assert not spec.name.endswith("_total"), spec.name  # the client adds it to samples
        if spec.kind == "histogram":  # every histogram measures time, in the base unit
            assert spec.name.endswith("_seconds") and "Seconds" in spec.help, spec.name
        assert "percent" not in spec.name, spec.name  # a 0-1 _ratio instead
    assert metrics.BY_NAME["node_import_job_progress_ratio"].seed == "job_progress_percentage"


def test_the_renames_map_each_seed_sample_to_its_exported_sample() -> None:
    renames = dict(metrics.renames())
    assert renames["node_import_batch_duration_bucket"] == \
        "node_import_batch_duration_seconds_bucket"
    assert renames["node_import_total_duration_count"] == \
        "node_import_total_duration_seconds_count"
    assert renames["node_import_metadata_duration_sum"] == \
        "node_import_metadata_duration_seconds_sum"
    assert renames["executor_queue_size"] == "node_import_executor_queue_size"
    assert renames["job_progress_percentage"] == "node_import_job_progress_ratio"
    assert renames["kafka_dlq_messages_produced_total"] == \
        "node_import_dlq_messages_produced_total"
    assert "kafka_consumer_errors_total" not in renames  # kept
    assert set(renames.values()) <= metrics.exported_names()
    assert not set(renames) & metrics.exported_names()  # no old name is still exported


def test_the_label_values_known_in_advance_are_the_ones_the_code_uses() -> None:
    from confluent_kafka import KafkaError

    from nodes_import import errors, status
    from nodes_import.kafka import deadletter, payload

    stages = {payload.STAGE_PARSE, payload.STAGE_VALIDATE, deadletter.STAGE_BACKPRESSURE,
              deadletter.STAGE_IMPORT}
    assert set(metrics.DLQ_STAGES) == stages
    assert set(metrics.JOB_ENDINGS) == status.TERMINAL
    assert {"TransientStorageError", "ConnectionLostError", "PayloadError",
            "JobTimeoutError"} <= set(metrics.ERROR_KINDS)
    assert errors.NodesImportError.__name__ not in metrics.ERROR_KINDS
    for code in metrics.CONSUMER_ERROR_CODES[1:]:  # [0]: COMMIT_FAILED, our own
        assert hasattr(KafkaError, code), code
    known = {spec.name: spec.known for spec in metrics.SPECS if spec.known}
    assert set(known) == {"kafka_consumer_errors", "node_import_dlq_messages_produced",
                          "node_import_total_duration_seconds", "node_import_rows",
                          "node_import_errors"}
    for spec in metrics.SPECS:
        if spec.known:
            assert len(spec.labels) == 1 and spec.side != "scrape", spec.name


def test_batch_buckets_cover_the_measured_durations() -> None:
    assert metrics.BATCH_BUCKETS[0] <= 0.05 and metrics.BATCH_BUCKETS[-1] >= 120  # timeout
    assert sum(0.5 <= b <= 3 for b in metrics.BATCH_BUCKETS) >= 4  # the healthy range
    assert metrics.JOB_BUCKETS[0] <= 0.05 and metrics.JOB_BUCKETS[-1] >= 3600


def _scrape() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client import generate_latest

    return samples(generate_latest(metrics.registry()).decode())


def test_a_written_batch_counts_its_rows_by_outcome_and_job_labels() -> None:
    before = _scrape()
    metrics.batch_written("g-unit", "d-unit", inserted=5, updated=2, unchanged=3, failed=1,
                          seconds=0.7)
    after = _scrape()

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("node_import_success_total", group="g-unit", domain="d-unit") == 10
    assert delta("node_import_failures_total", group="g-unit", domain="d-unit") == 1
    assert delta("node_import_conflict_updates_total") == 2
    assert delta("node_import_rows_total", outcome="unchanged") == 3
    assert delta("node_import_batch_duration_seconds_bucket", le="1.0") == 1
    assert delta("node_import_batch_duration_seconds_bucket", le="0.5") == 0


def test_job_labels_can_be_switched_off() -> None:
    metrics.configure(group=False, domain=False)
    try:
        before = total(_scrape(), "node_import_success_total", group="", domain="")
        metrics.batch_written("secret-group", "d", inserted=4, updated=0, unchanged=0,
                              failed=0, seconds=0.1)
        after = _scrape()
    finally:
        metrics.configure()
    assert total(after, "node_import_success_total", group="", domain="") == before + 4
    assert total(after, "node_import_success_total", group="secret-group") == 0


# A daemon in miniature, in a fresh interpreter (multiprocess mode must be chosen before
# any metric exists): the parent prepares its instruments as the daemon does, serves the
# admin API, and is scraped over HTTP before and after two spawned workers record.
DAEMON_SCRAPES = textwrap.dedent("""
    import multiprocessing, sys, urllib.request
    from pathlib import Path
    from nodes_import import metrics
    from nodes_import.daemon.admin import AdminApp, AdminServer

    def work(n):
        metrics.prepare()
        metrics.job_started()
        metrics.batch_encoded(0.02)
        metrics.batch_written("g", "d", inserted=n, updated=0, unchanged=0, failed=0,
                              seconds=0.1)
        metrics.job_finished("COMPLETED", 1.5)
        return n

    def gauges(snap):
        for spec in metrics.SPECS:
            if spec.side == "scrape" and not spec.labels:
                snap.gauges[spec.name] = 1
        snap.lag[("jobs", 0)] = 3
        snap.progress["0b1c"] = 42.0

    if __name__ == "__main__":
        path = metrics.setup_multiprocess(sys.argv[1])
        metrics.prepare()
        server = AdminServer(AdminApp(collectors=[metrics.ScrapeCollector([gauges])]),
                             "127.0.0.1", 0)
        port = server.start()
        def scrape(name):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                Path(sys.argv[2], name).write_bytes(r.read())
        scrape("before.txt")
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            assert sum(pool.map(work, [1, 2, 3, 4])) == 10
        metrics.message_received("t")
        metrics.consumer_error("_TRANSPORT")
        metrics.dead_letter_produced("parse")
        scrape("after.txt")
        server.close()
        metrics.cleanup_multiprocess(path)
""")


@pytest.fixture(scope="module")
def daemon_scrapes(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """The miniature daemon's /metrics before and after its workers recorded."""
    tmp_path = tmp_path_factory.mktemp("scrapes")
    env = {k: v for k, v in os.environ.items() if k != metrics.MULTIPROC_ENV}
    (tmp_path / "mp.py").write_text(DAEMON_SCRAPES)
    out = subprocess.run([sys.executable, str(tmp_path / "mp.py"), str(tmp_path / "prom"),
                          str(tmp_path)], capture_output=True, text=True, timeout=60, env=env,
                         cwd=Path(__file__).resolve().parents[2], check=False)
    assert out.returncode == 0, out.stderr
    assert not list((tmp_path / "prom").glob("*.db"))  # cleaned up
    return (tmp_path / "before.txt").read_text(), (tmp_path / "after.txt").read_text()


def test_worker_processes_and_the_parent_add_up_in_one_scrape_of_the_admin_api(
        daemon_scrapes: tuple[str, str]) -> None:
    before, after = daemon_scrapes
    scrape = samples(after)
    assert total(scrape, "node_import_success_total", group="g") == 10
    assert total(scrape, "node_import_batches_processed_total") == 4
    assert total(scrape, "node_import_total_duration_seconds_count", status="COMPLETED") == 4
    assert total(scrape, "kafka_consumer_messages_received_total", topic="t") == 1
    assert total(scrape, "kafka_consumer_errors_total", code="_TRANSPORT") == 1
    assert total(scrape, "node_import_dlq_messages_produced_total", stage="parse") == 1
    assert total(scrape, "node_import_job_progress_ratio", job_id="0b1c") == 0.42
    assert {name for name, _ in scrape} <= metrics.exported_names()
    assert {name for name, _ in samples(before)} <= metrics.exported_names()


def test_every_series_known_in_advance_is_exported_at_zero_from_start_up(
        daemon_scrapes: tuple[str, str]) -> None:
    before, after = daemon_scrapes
    first, last = samples(before), samples(after)
    for spec in metrics.SPECS:
        for value in spec.known:
            series = spec.samples[-1]  # a counter's _total, a histogram's _count
            labels = {spec.labels[0]: value}
            assert (series, frozenset(labels.items())) in first, (series, labels)
            assert total(first, series, **labels) == 0, (series, labels)
            assert (series, frozenset(labels.items())) in last, (series, labels)
    # and every unlabelled counter and histogram, before anything happened
    for spec in metrics.SPECS:
        if spec.kind != "gauge" and not spec.labels:
            assert (spec.samples[-1], frozenset()) in first, spec.name


def test_promtool_finds_nothing_to_lint_in_a_live_scrape(
        daemon_scrapes: tuple[str, str]) -> None:
    before, after = daemon_scrapes
    assert check_metrics(before) == ""
    assert check_metrics(after) == ""


def test_an_undeclared_scrape_gauge_is_reported_and_the_rest_still_served() -> None:
    from prometheus_client import generate_latest

    seen: list[BaseException] = []
    collector = metrics.ScrapeCollector(
        [lambda snap: snap.gauges.update({"executor_queue_size": 1,  # a pre-13 name
                                          "node_import_jobs_in_flight": 2})],
        on_error=seen.append)
    scrape = samples(generate_latest(metrics.registry([collector])).decode())
    assert total(scrape, "node_import_jobs_in_flight") == 2
    assert "executor_queue_size" in str(seen[0])


def test_progress_is_bytes_read_over_file_size_and_100_once_finished() -> None:
    assert metrics.progress_percentage("PROCESSING", source_bytes=200, bytes_read=50) == 25.0
    assert metrics.progress_percentage("PROCESSING", source_bytes=None, bytes_read=0) is None
    assert metrics.progress_percentage("FAILED", source_bytes=None, bytes_read=0) == 100.0


def test_private_directories_of_dead_daemons_are_swept_and_live_ones_kept(
        tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    gone = tmp_path / f"{metrics.DIR_PREFIX}{dead}-abc123"
    mine = tmp_path / f"{metrics.DIR_PREFIX}{os.getpid()}-def456"
    other = tmp_path / "unrelated"
    for folder in (gone, mine, other):
        folder.mkdir()
        (folder / "counter_1.db").write_bytes(b"")
    metrics._sweep_dead(tmp_path)
    assert not gone.exists() and mine.exists() and other.exists()


def test_each_retry_of_a_transient_error_is_counted() -> None:
    from nodes_import.config import RetryConfig
    from nodes_import.errors import TransientStorageError
    from nodes_import.store import retry

    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransientStorageError("connection lost")
        return "ok"

    before = total(_scrape(), "node_import_retries_total")
    policy = RetryConfig(max_attempts=3, initial_interval_ms=1, multiplier=1.0, max_interval_ms=1)
    assert retry.call(policy, flaky) == "ok"
    assert total(_scrape(), "node_import_retries_total") == before + 2
