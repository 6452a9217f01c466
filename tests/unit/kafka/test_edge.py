"""The client modules of kafka/ are the one confluent-kafka edge: no other module imports it
(pyproject's import-linter contracts say the same of every package; this checks the files)."""

from __future__ import annotations

import re
from pathlib import Path

import nodes_import

IMPORT = re.compile(r"^\s*(from|import)\s+confluent_kafka\b", re.MULTILINE)


def test_only_the_kafka_edges_client_modules_import_the_kafka_client() -> None:
    root = Path(nodes_import.__file__).parent
    importers = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py")
                       if IMPORT.search(p.read_text(encoding="utf-8")))
    assert importers == ["kafka/clients.py", "kafka/consumer.py", "kafka/offsets.py",
                         "kafka/producer.py"]
