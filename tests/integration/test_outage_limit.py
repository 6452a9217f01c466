"""A job the database keeps interrupting: resumed up to ``MAX_OUTAGE_RESUMES`` times, then
FAILED and dead-lettered, on the real database and broker.

The daemon's side of it (``Endings`` deciding and carrying out, its main pool, its
dead-letter writer) in this process: eleven real outages under a daemon would cost the
suite a minute of backoff, and the worker's side (an outage ends a daemon's job as
``Ending.OUTAGE``, not FAILED) is shown end to end by
``tests/resilience/test_circuit_breaker.py``.
"""

from __future__ import annotations

import uuid

import orjson

from nodes_import.config import ExecutorConfig, KafkaConfig
from nodes_import.daemon.admission import Admission
from nodes_import.daemon.database import MainDatabase
from nodes_import.daemon.decisions import MAX_OUTAGE_RESUMES
from nodes_import.daemon.endings import Endings
from nodes_import.daemon.window import RUNNING, WAITING, Window
from nodes_import.jobs import Ending, ImportJob, JobOutcome
from nodes_import.kafka import deadletter as dl
from nodes_import.kafka.clients import client_settings
from nodes_import.kafka.offsets import Delivery
from nodes_import.kafka.producer import Publisher
from nodes_import.store import jobrows
from tests.fixtures.kafka import TEST_PRODUCER, KafkaTest
from tests.fixtures.postgres import Database

DOMAIN = "3f1c1a3e-2b9d-4c55-9a57-0d3c6a1f0b21"
OWNER = "test-host:1"
GONE = "database connection failed: connection refused"


def test_a_job_interrupted_by_more_outages_than_the_limit_is_failed_and_dead_lettered(
        db: Database, kafka: KafkaTest) -> None:
    kafka.create_topic()
    job = ImportJob(str(uuid.uuid4()), "g", DOMAIN, reference_ids=("a", "b"),
                    claimed_by=OWNER, fail_on_outage=False)
    with db.pool.connection() as conn:
        jobrows.create_and_claim(conn, [job], owner=OWNER, lease_ms=60_000)
        jobrows.start_job(conn, job_id=job.job_id, partitions=1, source_bytes=None)
    window = Window(capacity=4)
    delivery = Delivery(kafka.topic, 0, 7, job.job_id.encode(),
                        orjson.dumps({"groupId": "g", "domainId": DOMAIN,
                                      "referenceIds": ["a", "b"], "jobId": job.job_id}))
    slot = window.track(delivery)
    slot.job = job
    window.admit(slot)
    main_db = MainDatabase(db.dsn, connect_timeout_s=2.0)
    main_db.open()
    publisher = Publisher(client_settings(KafkaConfig(producer_properties=TEST_PRODUCER),
                                          "producer", bootstrap=kafka.bootstrap))
    endings = Endings(window, Admission(ExecutorConfig(), dsn=db.dsn, probe_timeout_s=1.0),
                      main_db, dl.DeadLetterWriter(publisher, kafka.dlq, kafka.group_id),
                      max_job_crashes=3)
    interrupted = JobOutcome(job.job_id, "PROCESSING", GONE,
                             error_type="nodes_import.errors.ConnectionLostError",
                             ending=Ending.OUTAGE)
    try:
        for resumes in range(1, MAX_OUTAGE_RESUMES + 2):
            slot.state = RUNNING  # started again (the intake's part), interrupted again
            window.hold(slot)
            endings.end(slot, interrupted, stopping=False)
            status = db.scalar("SELECT status FROM job_status WHERE id = %s", (job.job_id,))
            if resumes <= MAX_OUTAGE_RESUMES:  # held for a resume: nothing ended
                assert (slot.state, slot.outage_resumes, status) == \
                    (WAITING, resumes, "PROCESSING")
                assert slot in window.slots and window.tracker.to_commit() == {}
        # the 11th: FAILED with the outage's error, dead-lettered, its offset free to commit
        assert slot.outage_resumes == MAX_OUTAGE_RESUMES + 1
        assert db.query("SELECT status, error FROM job_status WHERE id = %s",
                        (job.job_id,)) == [("FAILED", GONE)]
        letter = kafka.read(kafka.dlq, 1)[0]
        assert letter.value == delivery.value
        info = dl.header_map(letter.headers)
        assert info[dl.H_STAGE] == dl.STAGE_IMPORT and info[dl.H_JOB_ID] == job.job_id
        assert info[dl.H_CLASS] == "nodes_import.errors.ConnectionLostError"
        assert slot not in window.slots
        assert window.tracker.to_commit() == {(kafka.topic, 0): 8}
    finally:
        publisher.close()
        main_db.close()
