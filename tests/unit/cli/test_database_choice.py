"""Which PostgreSQL and Kafka a command uses: configured, the libpq environment, a stand-in."""

from __future__ import annotations

import pytest

from nodes_import import config
from nodes_import.cli import common, local
from nodes_import.errors import ConfigError

DSN = "postgresql://app@db.example/nodes"


@pytest.fixture()
def embedded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The embedded server, faked: the directories it was started in."""
    started: list[str] = []

    def fake(data_dir: str, *, quiet: bool = False) -> str:
        started.append(data_dir)
        return "postgresql://embedded/postgres"

    monkeypatch.setattr(local, "embedded_postgres", fake)
    monkeypatch.setattr(local, "available", lambda module: True)
    return started


def test_an_explicit_dsn_wins_over_the_libpq_environment(embedded: list[str]) -> None:
    cfg = config.load(environ={"NODES_IMPORT_DSN": DSN, "PGHOST": "elsewhere"})
    assert common.resolve_dsn(cfg) == DSN and embedded == []


def test_the_libpq_environment_is_used_as_psql_would(embedded: list[str]) -> None:
    cfg = config.load(environ={"PGSERVICE": "nodes"})
    assert common.resolve_dsn(cfg) == common.LIBPQ_ENVIRONMENT_DSN
    assert common.resolve_dsn(cfg, embedded=False) == common.LIBPQ_ENVIRONMENT_DSN
    assert embedded == []


def test_the_embedded_server_only_when_nothing_at_all_is_configured(
        embedded: list[str]) -> None:
    cfg = config.load(environ={"PGSSLMODE": "require"})  # tunes a connection, names none
    assert common.resolve_dsn(cfg) == "postgresql://embedded/postgres"
    assert embedded == [cfg.database.embedded_dir]


def test_without_the_local_extra_the_error_says_how_to_configure_and_what_to_install(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "available", lambda module: False)
    with pytest.raises(ConfigError) as caught:
        common.resolve_dsn(config.load(environ={}))
    text = str(caught.value)
    assert "--dsn" in text and "NODES_IMPORT_DSN" in text and "PGHOST" in text
    assert "pip install 'nodes-import[local]'" in text and "\n" not in text


def test_run_without_local_never_falls_back_to_the_embedded_server(embedded: list[str]) -> None:
    with pytest.raises(ConfigError, match="no database configured"):
        common.resolve_dsn(config.load(environ={}), embedded=False)
    cfg = config.load(environ={"NODES_IMPORT_KAFKA_BOOTSTRAP_SERVERS": "b:9092"})
    with pytest.raises(ConfigError, match=r"^no PostgreSQL configured: .*PGHOST.*--local"):
        common.configured(cfg)
    assert embedded == []


def test_run_without_bootstrap_servers_says_how_to_configure_them_in_one_line() -> None:
    with pytest.raises(ConfigError) as caught:
        common.configured(config.load(environ={"NODES_IMPORT_DSN": DSN}))
    text = str(caught.value)
    assert text.startswith("no Kafka configured: pass --bootstrap-server or set "
                           "kafka.bootstrap-servers") and "--local" in text and "\n" not in text
    with pytest.raises(ConfigError, match=r"^no Kafka and no PostgreSQL configured: .*--local"):
        common.configured(config.load(environ={}))


def test_run_with_both_configured_gets_the_resolved_dsn() -> None:
    cfg = config.load(environ={"NODES_IMPORT_KAFKA_BOOTSTRAP_SERVERS": "b:9092",
                               "PGHOST": "db.example"})
    assert common.configured(cfg).database.dsn == common.LIBPQ_ENVIRONMENT_DSN


def test_a_missing_stand_in_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "available", lambda module: module != local.BROKER_MODULE)
    with pytest.raises(ConfigError, match=r"^the local Kafka broker needs the 'local' extra: "
                                          r"pip install 'nodes-import\[local\]'$"):
        local.require(local.POSTGRES_MODULE, local.BROKER_MODULE)
    cfg = config.load(environ={"NODES_IMPORT_DSN": DSN})
    with pytest.raises(ConfigError, match="local Kafka broker needs"), \
            local.local_services(cfg):
        pass
