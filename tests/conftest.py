"""Test configuration: fixture plugins, and markers derived from the fixtures a test uses."""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.fixtures.faultproxy", "tests.fixtures.postgres", "tests.fixtures.files",
                  "tests.fixtures.kafka", "tests.fixtures.daemon", "tests.fixtures.s3",
                  "tests.fixtures.fileserver", "tests.fixtures.soak"]

# fixture name -> markers it implies
_FIXTURE_MARKERS = {"pg_dsn": ("postgres",), "pg_server_dsn": ("postgres",),
                    "db": ("postgres",), "kafka_broker": ("kafka",),
                    # the chaos soak starts a PostgreSQL and a broker of its own
                    "soak": ("slow", "postgres", "kafka")}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = getattr(item, "fixturenames", ())
        for fixture, markers in _FIXTURE_MARKERS.items():
            if fixture in names:
                for marker in markers:
                    item.add_marker(getattr(pytest.mark, marker))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter,
                            config: pytest.Config) -> None:
    """Name the random order's seed at the end of every run, -q included, so a failure
    that depends on the order can be replayed with ``--randomly-seed=N`` (pytest-randomly;
    ``-p no:randomly`` runs the tests in file order)."""
    if config.pluginmanager.hasplugin("randomly"):
        seed = config.getoption("randomly_seed", None)
        terminalreporter.write_line(f"random test order: --randomly-seed={seed} replays it")
