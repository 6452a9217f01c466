"""Configuration: layering, validation, and the shipped config.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodes_import import config
from nodes_import.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_config_yaml_holds_every_key_with_its_default() -> None:
    flat = config.read_file(ROOT / "config.yaml")
    assert set(flat) == set(config.KEYS)
    for key, value in flat.items():
        assert value == config.KEYS[key][1], key


def test_the_seed_configuration_matrix_keys_all_exist() -> None:
    seed_keys = [
        "kafka.consumer.concurrency", "node.import.timeout.ms", "node.import.global.timeout.ms",
        "node.import.executor.core-pool-size", "node.import.executor.max-pool-size",
        "node.import.executor.queue-capacity", "node.import.batch.size",
        "node.import.retry.max-attempts", "node.import.retry.initial-interval",
        "node.import.retry.multiplier", "node.import.retry.max-interval",
        "node.import.max-parallel-futures",
    ]
    assert set(seed_keys) <= set(config.KEYS)


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
