"""Operations end to end: a real daemon's /metrics after real imports in its workers."""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

from nodes_import.cli.sample import write_users
from nodes_import.config import KafkaConfig
from nodes_import.kafka.clients import client_settings
from nodes_import.kafka.consumer import JobConsumer
from tests.fixtures import promtool
from tests.fixtures.daemon import Daemons
from tests.fixtures.http import free_port, request, scrape, total
from tests.fixtures.kafka import TEST_CONSUMER, KafkaTest, wait_until
from tests.fixtures.postgres import Database
from tests.integration.test_daemon import DOMAIN, job_message, wait_status


def test_a_scrape_after_imports_through_the_daemon_counts_exactly_the_rows_the_workers_wrote(
        daemons: Daemons, kafka: KafkaTest, db: Database, tmp_path: Path) -> None:
    kafka.create_topic()
    port = free_port()
    prom_dir = tmp_path / "prom"
    daemon = daemons.start(admin={"enabled": True, "port": port},
                           metrics={"multiproc-dir": str(prom_dir)})
    assert request(port, "/healthz").status == 200
    wait_until(lambda: request(port, "/readyz").status == 200, 10, "ready")
    users = write_users(tmp_path / "users.csv.gz", 2500, bad_every=100)  # 25 blank ids
    file_job, ids_job = str(uuid.uuid4()), str(uuid.uuid4())
    kafka.send(job_message("ops", file=str(users), job_id=file_job))
    kafka.send(job_message("ops-ids", ids=[f"ref-{n}" for n in range(300)], job_id=ids_job))
    kafka.send(b"{not json")

    row = wait_status(db, file_job)
    assert (row["success"], row["failed"]) == (2475, 25)
    wait_status(db, ids_job)
    m = wait_until(lambda: (s := scrape(port)) and total(
        s, "kafka_consumer_messages_processed_total") == 3 and s, 20, "3 messages processed")

    # rows: counted inside the worker processes, exactly as the database counted them
    assert total(m, "node_import_success_total", group="ops", domain=DOMAIN) == 2475
    assert total(m, "node_import_failures_total", group="ops", domain=DOMAIN) == 25
    assert total(m, "node_import_success_total", group="ops-ids") == 300
    assert total(m, "node_import_rows_total", outcome="inserted") == 2775
    assert total(m, "node_import_rows_total", outcome="failed") == 25
    assert total(m, "node_import_conflict_updates_total") == 0
    assert total(m, "node_import_jobs_started_total") == 2
    assert total(m, "node_import_jobs_completed_total") == 2
    assert total(m, "node_import_jobs_failed_total") == 0
    assert total(m, "node_import_total_duration_seconds_count", status="COMPLETED") == 2
    assert total(m, "node_import_batches_processed_total") >= 3  # 2 file batches + 1 list
    assert total(m, "node_import_batch_duration_seconds_count") == \
        total(m, "node_import_batches_processed_total")
    # one per encoded file batch; the list went in a bundle (no COPY payload to encode)
    assert total(m, "node_import_metadata_duration_seconds_count") >= 2
    # the daemon's own counters, and the scrape-time gauges
    assert total(m, "kafka_consumer_messages_received_total", topic=kafka.topic) == 3
    assert total(m, "node_import_dlq_messages_produced_total", stage="parse") == 1
    assert total(m, "node_import_executor_max_workers") == 2
    assert total(m, "node_import_jobs_in_flight") == 0
    assert total(m, "node_import_executor_active_threads") == 0
    assert total(m, "node_import_oldest_running_job_age_seconds") == 0
    assert any(path.name.startswith("counter_") for path in prom_dir.iterdir())
    # the series known in advance are there though nothing failed; promtool finds no fault
    assert (total(m, "node_import_errors_total", kind="TransientStorageError"),
            total(m, "kafka_consumer_errors_total", code="COMMIT_FAILED")) == (0, 0)
    assert ("node_import_errors_total",
            frozenset({("kind", "TransientStorageError")})) in m
    if promtool.available():
        assert promtool.check_metrics(request(port, "/metrics").body.decode()) == ""

    job = request(port, f"/jobs/{file_job}").json()
    assert (job["status"], job["progress_percentage"], job["failed_count"]) == \
        ("COMPLETED", 100.0, 25)
    assert len(job["failures"]) == 20 and job["failures"][0]["row_number"] == 2
    listed = request(port, "/jobs?status=completed&limit=5").json()
    assert {j["id"] for j in listed} == {file_job, ids_job}
    assert db.dsn not in request(port, "/readyz").body.decode()

    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    assert not list(prom_dir.glob("*.db"))  # this run's metric files are cleaned up


def test_consumer_lag_is_exact_per_assigned_partition_and_follows_commits_and_new_messages(
        kafka: KafkaTest) -> None:
    # Tansu's watermarks are wrong when a produced batch holds several records
    # (../shared/notes/kafka-broker.md): each message here is flushed on its own, a batch
    # of one record, and then its figures are exact.
    topic = kafka.create_topic(partitions=2)
    for partition, count in ((0, 3), (1, 5)):
        for _ in range(count):
            kafka.send(b"{}", partition=partition, flush=True)
    assigned: list[tuple[str, int]] = []
    consumer = JobConsumer(
        client_settings(KafkaConfig(consumer_properties=TEST_CONSUMER), "consumer",
                        bootstrap=kafka.bootstrap, group_id=kafka.group_id),
        kafka.pattern, on_assign=assigned.extend, on_revoke=lambda tps: None)
    consumer.open(10)
    try:
        received = [0]

        def all_eight() -> bool:
            received[0] += consumer.poll(0.1) is not None
            return received[0] == 8

        wait_until(all_eight, 20, "the 8 messages")
        assert sorted(assigned) == [(topic, 0), (topic, 1)]
        # nothing committed: every message is lag, whether delivered to us or not
        assert consumer.lag() == {(topic, 0): 3, (topic, 1): 5}
        assert consumer.commit({(topic, 0): 2, (topic, 1): 5})
        assert consumer.lag() == {(topic, 0): 1, (topic, 1): 0}
        for _ in range(2):
            kafka.send(b"{}", partition=1, flush=True)
        # polling goes on after a lag read; the new messages raise that partition's lag
        wait_until(lambda: consumer.poll(0.1), 10, "a message sent after reading the lag")
        wait_until(lambda: consumer.lag() == {(topic, 0): 1, (topic, 1): 2}, 10,
                   "the lag to count the 2 new messages")
    finally:
        consumer.close()
