"""The metrics module: one declaration per metric, and what the helpers record."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from nodes_import import metrics
from tests.fixtures.http import samples, total

# Every metric issue 4 (and the seed's sections 3.9 and 7) names.
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
    assert NAMED <= set(names)
    for spec in metrics.SPECS:
        assert spec.kind in ("counter", "histogram", "gauge") and spec.help, spec.name
        assert spec.side in ("worker", "parent", "scrape"), spec.name
        if spec.kind == "histogram":
            assert list(spec.buckets) == sorted(spec.buckets) and len(spec.buckets) >= 8
        if spec.side == "scrape":
            assert spec.kind == "gauge", spec.name


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
    assert delta("node_import_batch_duration_bucket", le="1.0") == 1
    assert delta("node_import_batch_duration_bucket", le="0.5") == 0


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


def test_worker_processes_and_the_parent_add_up_in_one_scrape(tmp_path: Path) -> None:
    # In a fresh interpreter: multiprocess mode must be chosen before any metric exists.
    script = textwrap.dedent("""
        import multiprocessing, sys
        from nodes_import import metrics

        def work(n):
            metrics.batch_written("g", "d", inserted=n, updated=0, unchanged=0, failed=0,
                                  seconds=0.1)
            return n

        if __name__ == "__main__":
            path = metrics.setup_multiprocess(sys.argv[1])
            with multiprocessing.get_context("spawn").Pool(2) as pool:
                assert sum(pool.map(work, [1, 2, 3, 4])) == 10
            metrics.message_received("t")
            from prometheus_client import generate_latest
            sys.stdout.write(generate_latest(metrics.registry()).decode())
            metrics.cleanup_multiprocess(path)
    """)
    env = {k: v for k, v in os.environ.items() if k != metrics.MULTIPROC_ENV}
    (tmp_path / "mp.py").write_text(script)
    out = subprocess.run([sys.executable, str(tmp_path / "mp.py"), str(tmp_path / "prom")],
                         capture_output=True, text=True, timeout=60, env=env,
                         cwd=Path(__file__).resolve().parents[2], check=False)
    assert out.returncode == 0, out.stderr
    scrape = samples(out.stdout)
    assert total(scrape, "node_import_success_total", group="g") == 10
    assert total(scrape, "node_import_batches_processed_total") == 4
    assert total(scrape, "kafka_consumer_messages_received_total", topic="t") == 1
    assert not list((tmp_path / "prom").glob("*.db"))


def test_progress_is_bytes_read_over_file_size_and_100_once_finished() -> None:
    assert metrics.progress_percentage({"status": "PROCESSING", "source_bytes": 200,
                                        "bytes_read": 50}) == 25.0
    assert metrics.progress_percentage({"status": "PROCESSING", "source_bytes": None}) is None
    assert metrics.progress_percentage({"status": "FAILED", "source_bytes": None}) == 100.0


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
