"""``metrics.disable``: the one-off CLI import records nothing and never loads the client."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
from nodes_import import metrics
metrics.disable()
metrics.job_started()
metrics.batch_encoded(0.1)
metrics.batch_written("g", "d", inserted=1, updated=2, unchanged=3, failed=4, seconds=0.2)
metrics.batch_failed("g", "d", rows=1, kind="X")
print("prometheus_client" in sys.modules)
"""


def test_disabled_metrics_accept_every_call_and_never_import_the_client() -> None:
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"
