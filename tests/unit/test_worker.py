"""The worker side of the process boundary stays free of the Kafka client."""

from __future__ import annotations

import pickle
import subprocess
import sys

from nodes_import.config import ImportConfig
from nodes_import.jobs import ImportJob, JobOutcome
from nodes_import.worker import WorkerSettings


def test_importing_the_worker_and_the_cli_never_loads_the_kafka_client() -> None:
    code = ("import sys, nodes_import.worker, nodes_import.cli; "
            "print('confluent_kafka' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "False"


def test_what_crosses_the_boundary_pickles_to_an_equal_value() -> None:
    values = [ImportJob("j", "g", "d", reference_ids=("a", "b"), claimed_by="h:1"),
              ImportConfig(), WorkerSettings("dbname=x", 3, 1.5),
              JobOutcome("j", "FAILED", "boom", {"total_nodes": 1}, "X", "trace")]
    for value in values:
        assert pickle.loads(pickle.dumps(value)) == value
