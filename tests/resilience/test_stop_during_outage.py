"""SIGTERM while the database is unreachable: the daemon still stops in order and exits 0.

Found by the chaos soak (seed 15, 30 min, 3 daemons: faults #115 and #175, a SIGTERM while
the database link was cut): the daemon drained ("drained", jobsLeft 0), then its close
step asked its pool for a connection to release its leases outside
``connection.wrapped()``; the pool had none left and raised ``psycopg_pool.PoolTimeout``,
which is neither a ``StorageError`` nor an ``OSError``. The daemon exited 1 with a
traceback, and the rest of the stop order (closing the consumer, the producer, the pool
and the admin API, "daemon stopped") never ran.
"""

from __future__ import annotations

import signal
import uuid

from tests.fixtures.daemon import Daemons
from tests.fixtures.faultproxy import FaultProxy, through
from tests.fixtures.kafka import KafkaTest, wait_until
from tests.fixtures.postgres import Database
from tests.integration.test_daemon import job_message


def test_sigterm_while_the_database_is_unreachable_exits_0_after_closing_everything(
        daemons: Daemons, kafka: KafkaTest, db: Database, pg_proxy: FaultProxy) -> None:
    kafka.create_topic()
    daemon = daemons.start(database={"dsn": through(pg_proxy, db.dsn),
                                     "connect-timeout": {"ms": 1000}})
    # 1. the database goes away; a job arrives and cannot start: the daemon's pool loses
    # its connections and cannot make new ones
    pg_proxy.refuse_for(120)
    kafka.send(job_message("outage", ids=["a", "b"], job_id=str(uuid.uuid4())))
    wait_until(lambda: len(daemon.events("cannot start the job; retrying")) >= 2, 60,
               "the job failing to start twice")
    # 2. the operator stops the daemon during the outage
    daemon.signal(signal.SIGTERM)
    code = daemon.wait(60)
    assert daemon.events("drained")
    assert daemon.events("daemon stopped"), daemon.log_text()[-3000:]
    assert code == 0, daemon.log_text()[-3000:]
