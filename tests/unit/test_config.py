"""Configuration: layering, validation, and the shipped config.yaml."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

from nodes_import import config, settings
from nodes_import.errors import ConfigError
from nodes_import.settings import Setting

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_config_yaml_holds_every_key_with_its_default() -> None:
    """config.yaml may omit no key: null-valued and secret ones are listed too (as null)."""
    flat = config.read_file(ROOT / "config.yaml")  # refuses unknown and retired keys
    assert sorted(set(config.KEYS) - set(flat)) == [], "declared in code, missing in config.yaml"
    assert sorted(set(flat) - set(config.KEYS)) == [], "in config.yaml, unknown to the code"
    assert set(flat) == set(config.KEYS)
    for key, value in flat.items():
        assert value == config.KEYS[key][1], f"{key}: config.yaml says {value!r}"
        assert type(value) is type(config.KEYS[key][1]), key


def test_the_seed_configuration_matrix_keys_are_all_known() -> None:
    """Each key of the seed's matrix is read, or refused with what replaces it."""
    seed_keys = [
        "kafka.consumer.concurrency", "node.import.timeout.ms", "node.import.global.timeout.ms",
        "node.import.executor.core-pool-size", "node.import.executor.max-pool-size",
        "node.import.executor.queue-capacity", "node.import.batch.size",
        "node.import.retry.max-attempts", "node.import.retry.initial-interval",
        "node.import.retry.multiplier", "node.import.retry.max-interval",
        "node.import.max-parallel-futures",
    ]
    assert set(seed_keys) <= set(config.KEYS) | set(config.RETIRED_KEYS)
    assert set(seed_keys) - set(config.KEYS) == {"kafka.consumer.concurrency"}


def test_the_configuration_reference_is_what_the_generator_writes() -> None:
    written = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert written == config.reference_markdown(), (
        f"docs/configuration.md is stale: run `{config.REGENERATE}`")


def test_the_reference_documents_every_key_and_says_how_it_is_made() -> None:
    text = config.reference_markdown()
    assert config.REGENERATE in text.splitlines()[0] and "do not edit" in text[:300]
    for key, spec in config.SETTINGS.items():
        assert spec.doc, key
        assert f"| `{key}` |" in text and f"`{config.env_name(key)}`" in text, key
    assert "`kafka.consumer.concurrency`" in text


def test_environment_names_are_derived_from_the_keys() -> None:
    names = config.env_key_map()
    for key in config.KEYS:
        assert names["NODES_IMPORT_" + key.upper().replace(".", "_").replace("-", "_")] == key
    assert names["NODES_IMPORT_NODE_IMPORT_BATCH_SIZE"] == "node.import.batch.size"
    assert names["NODES_IMPORT_DSN"] == "database.dsn"  # the one short alias
    assert len(names) == len(config.KEYS) + len(config.ENV_ALIASES)


def _other_value_text(spec: Setting, tmp_path: Path) -> str:
    """Environment text for a valid value of ``spec`` that is not its default."""
    if spec.choices:
        return next(c for c in spec.choices if c != spec.default)
    if spec.kind is bool:
        return "false" if spec.default else "true"
    if spec.kind is int:
        return f"{spec.default + 1:_}"
    if spec.kind is float:
        return str(spec.default * 0.75)
    if spec.kind in (settings.OPTIONAL_STR, settings.STR_LIST):
        return str(tmp_path)
    if spec.kind == settings.MAPPING:
        return "{client.id: from-env}"
    return f"{spec.default}-from-env"


@pytest.mark.parametrize("key", list(config.KEYS))
def test_each_key_set_in_the_environment_reaches_its_config_attribute(key: str,
                                                                      tmp_path: Path) -> None:
    (path, spec), = [(p, s) for p, s in config.PATHS.items() if s.key == key]
    default = config.load(environ={})
    cfg = config.load(environ={config.env_name(key): _other_value_text(spec, tmp_path)})

    def attribute(c: config.Config) -> Any:
        return functools.reduce(getattr, path, c)

    assert cfg.values[key] != spec.default
    assert attribute(cfg) != attribute(default)
    assert attribute(cfg) == spec.to_field(cfg.values[key], {})


def test_secrets_stay_out_of_the_config_repr() -> None:
    secrets = {"NODES_IMPORT_DSN": "postgresql://u:db-secret@h/d",
               "NODES_IMPORT_ADMIN_TOKEN": "token-secret",
               "NODES_IMPORT_KAFKA_PRODUCER_PROPERTIES": "{sasl.password: kafka-secret}",
               "NODES_IMPORT_KAFKA_PROPERTIES": "{sasl.password: shared-secret}"}
    text = repr(config.load(environ=secrets))
    assert not any(word in text for word in ("db-secret", "token-secret", "kafka-secret",
                                             "shared-secret"))
    assert {s.key for s in config.SETTINGS.values() if s.secret} == {
        "database.dsn", "admin.token", "kafka.consumer.properties", "kafka.producer.properties",
        "kafka.properties"}


REPLACEMENT = r"node\.import\.executor\.max-pool-size"


def test_kafka_consumer_concurrency_in_the_file_is_refused_naming_its_replacement(
        tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("kafka: {consumer: {concurrency: 4}}\n")
    with pytest.raises(ConfigError, match=r"kafka\.consumer\.concurrency.*" + REPLACEMENT):
        config.load(path, environ={})


def test_kafka_consumer_concurrency_in_the_environment_is_refused_naming_its_replacement(
        ) -> None:
    env = {"NODES_IMPORT_KAFKA_CONSUMER_CONCURRENCY": "4"}
    with pytest.raises(ConfigError, match=r"NODES_IMPORT_KAFKA_CONSUMER_CONCURRENCY.*"
                       r"kafka\.consumer\.concurrency.*" + REPLACEMENT):
        config.load(environ=env)
    with pytest.raises(ConfigError, match=REPLACEMENT):
        config.load(overrides={"kafka.consumer.concurrency": 4}, environ={})


def test_database_pool_max_size_is_refused_naming_how_pools_are_sized(tmp_path: Path) -> None:
    # It was read by no command (every pool is sized by what uses it): refused, not ignored.
    path = tmp_path / "c.yaml"
    path.write_text("database: {pool: {max-size: 8}}\n")
    with pytest.raises(ConfigError, match=r"database\.pool\.max-size.*max-parallel-futures"):
        config.load(path, environ={})
    with pytest.raises(ConfigError, match=r"NODES_IMPORT_DATABASE_POOL_MAX_SIZE"):
        config.load(environ={"NODES_IMPORT_DATABASE_POOL_MAX_SIZE": "8"})


def test_a_refused_key_names_a_key_that_exists() -> None:
    for key, retired in config.RETIRED_KEYS.items():
        assert key not in config.KEYS
        assert retired.replacement in config.KEYS


def test_file_then_environment_then_flags_win_in_that_order(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("node:\n  import:\n    batch:\n      size: 10\n    max-parallel-futures: 3\n")
    env = {"NODES_IMPORT_NODE_IMPORT_BATCH_SIZE": "20", "NODES_IMPORT_DSN": "postgresql://x/y"}
    cfg = config.load(path, environ=env)
    assert cfg.imports.batch_size == 20
    assert cfg.imports.max_parallel_futures == 3
    assert cfg.database.dsn == "postgresql://x/y"
    cfg = config.load(path, {"node.import.batch.size": 30}, environ=env)
    assert cfg.imports.batch_size == 30


def test_config_file_can_come_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("node: {import: {retry: {max-attempts: 7}}}\n")
    cfg = config.load(environ={"NODES_IMPORT_CONFIG": str(path)})
    assert cfg.imports.retry.max_attempts == 7


@pytest.mark.parametrize("text, key", [
    ("node: {import: {batch: {sise: 10}}}", "node.import.batch.sise"),
    ("bogus: 1", "bogus"),
])
def test_an_unknown_key_is_an_error_naming_it(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config.load(path, environ={})


@pytest.mark.parametrize("text, key", [
    ("node: {import: {batch: {size: ten}}}", "node.import.batch.size"),
    ("node: {import: {retry: {multiplier: true}}}", "node.import.retry.multiplier"),
    ("database: {dsn: 5}", "database.dsn"),
    ("node: {import: {allowed-roots: /tmp}}", "node.import.allowed-roots"),
    ("node: {import: {backpressure: drop}}", "node.import.backpressure"),
    ("node: {import: {max-reject-ratio: 1.5}}", "node.import.max-reject-ratio"),
    ("node: {import: {batch: {size: 0}}}", "node.import.batch.size"),
])
def test_a_value_of_the_wrong_type_is_an_error_naming_the_key(tmp_path: Path, text: str,
                                                               key: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config.load(path, environ={})


def test_a_bad_environment_value_is_an_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"node\.import\.batch\.size"):
        config.load(environ={"NODES_IMPORT_NODE_IMPORT_BATCH_SIZE": "many"})


def test_allowed_roots_default_to_cwd_and_temp_dir() -> None:
    import tempfile

    cfg = config.load(environ={})
    assert str(Path.cwd().resolve()) in cfg.imports.allowed_roots
    assert str(Path(tempfile.gettempdir()).resolve()) in cfg.imports.allowed_roots


def test_kafka_passthrough_properties_keep_their_librdkafka_names(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("kafka:\n  consumer:\n    properties:\n      security.protocol: SASL_SSL\n"
                    "      session.timeout.ms: 2000\n")
    cfg = config.load(path, environ={})
    assert cfg.kafka.consumer_properties == {"security.protocol": "SASL_SSL",
                                             "session.timeout.ms": 2000}


def test_an_environment_mapping_merges_key_by_key_into_the_files(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("kafka:\n  consumer:\n    properties:\n      security.protocol: SASL_SSL\n"
                    "      sasl.username: app\n      sasl.password: from-file\n"
                    "      client.id: gone\n")
    env = {"NODES_IMPORT_KAFKA_CONSUMER_PROPERTIES": "{sasl.password: x, client.id: null}"}
    cfg = config.load(path, environ=env)
    assert cfg.kafka.consumer_properties == {"security.protocol": "SASL_SSL",
                                             "sasl.username": "app", "sasl.password": "x"}


def test_kafka_properties_is_one_mapping_for_every_client(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("kafka:\n  properties: {security.protocol: SASL_SSL, sasl.username: app}\n")
    cfg = config.load(path, environ={"NODES_IMPORT_KAFKA_PROPERTIES": "{sasl.password: x}"})
    assert cfg.kafka.properties == {"security.protocol": "SASL_SSL", "sasl.username": "app",
                                    "sasl.password": "x"}
    assert cfg.kafka.consumer_properties == {} and cfg.kafka.producer_properties == {}


@pytest.mark.parametrize("name, closest", [
    ("NODES_IMPORT_KAFKA_BOOTSTRAP_SERVER", "NODES_IMPORT_KAFKA_BOOTSTRAP_SERVERS"),
    ("NODES_IMPORT_DNS", "NODES_IMPORT_DSN"),
    ("NODES_IMPORT_BATCH_SIZE", "NODES_IMPORT_NODE_IMPORT_BATCH_SIZE"),
])
def test_an_unknown_nodes_import_variable_is_an_error_naming_it_and_the_closest_key(
        name: str, closest: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{name}: .*did you mean {closest}\b") as caught:
        config.load(environ={name: "1"})
    assert config.env_key_map()[closest] in str(caught.value)


def test_an_unknown_variable_like_no_key_is_an_error_without_a_guess() -> None:
    with pytest.raises(ConfigError, match=r"^NODES_IMPORT_ZZZ: not a configuration variable$"):
        config.load(environ={"NODES_IMPORT_ZZZ": "1"})


def test_the_projects_own_variables_that_are_not_keys_are_accepted() -> None:
    assert "NODES_IMPORT_CONFIG" in config.ENV_NOT_KEYS
    others = {name: "1" for name in config.ENV_NOT_KEYS if name != "NODES_IMPORT_CONFIG"}
    config.load(environ={**others, "OTHER_APP_SETTING": "x", "nodes_import_lower": "x"})


def test_an_unknown_key_in_the_file_names_the_closest_known_key(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("kafka: {bootstrap-server: 'b:9092'}\n")
    with pytest.raises(ConfigError, match=r"kafka\.bootstrap-server \(did you mean "
                                          r"kafka\.bootstrap-servers\?\)"):
        config.load(path, environ={})


def test_the_libpq_variables_that_choose_a_server_or_login_are_recorded() -> None:
    cfg = config.load(environ={"PGHOST": "db.example", "PGSERVICE": "nodes",
                               "PGSSLMODE": "require", "PGPORT": ""})
    assert cfg.database.libpq_environment == ("PGHOST", "PGSERVICE")
    assert config.load(environ={"PGSSLMODE": "require"}).database.libpq_environment == ()
    assert config.load(environ={}).database.libpq_environment == ()
