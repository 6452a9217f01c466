"""kafka/consumer.py is the one confluent-kafka edge: no other module builds a client."""

from __future__ import annotations

import re
from pathlib import Path

import nodes_import

IMPORT = re.compile(r"^\s*(from|import)\s+confluent_kafka\b", re.MULTILINE)


def test_only_the_consumer_module_imports_the_kafka_client() -> None:
    root = Path(nodes_import.__file__).parent
    importers = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py")
                       if IMPORT.search(p.read_text(encoding="utf-8")))
    assert importers == ["kafka/consumer.py"]
