"""Client settings: which layer of librdkafka properties wins, and a command's quiet client."""

from __future__ import annotations

import pytest

from nodes_import.config import KafkaConfig
from nodes_import.errors import ConfigError
from nodes_import.kafka.clients import (
    TOOL_LOG_LEVEL,
    ClientErrors,
    client_settings,
    redacted,
    tool_settings,
)
from nodes_import.kafka.producer import Publisher

SHARED = {"security.protocol": "SASL_SSL", "sasl.username": "app", "sasl.password": "s3cret",
          "client.id": "shared", "linger.ms": 50}


def test_kafka_properties_reach_every_client_and_the_clients_own_override_them() -> None:
    kafka = KafkaConfig(bootstrap_servers="b:9092", properties=SHARED,
                        consumer_properties={"client.id": "consumer"},
                        producer_properties={"client.id": "producer"})
    consumer, producer = client_settings(kafka, "consumer"), client_settings(kafka, "producer")
    for settings in (consumer, producer):
        assert {k: settings[k] for k in ("security.protocol", "sasl.username",
                                         "sasl.password")} == {
            "security.protocol": "SASL_SSL", "sasl.username": "app", "sasl.password": "s3cret"}
    assert (consumer["client.id"], producer["client.id"]) == ("consumer", "producer")
    assert producer["linger.ms"] == 50  # over the producer's own default (5)
    assert producer["acks"] == "all" and consumer["auto.offset.reset"] == "earliest"


def test_shared_properties_cannot_turn_auto_commit_on_either() -> None:
    kafka = KafkaConfig(bootstrap_servers="b:9092", properties={"enable.auto.commit": True})
    assert client_settings(kafka, "consumer")["enable.auto.commit"] is False


def test_no_bootstrap_servers_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match=r"kafka\.bootstrap-servers"):
        client_settings(KafkaConfig(), "producer")


def test_a_commands_client_is_quiet_records_its_errors_and_gives_a_message_up_in_time() -> None:
    errors = ClientErrors()
    kafka = KafkaConfig(bootstrap_servers="b:9092", properties=SHARED)
    settings = tool_settings(kafka, "producer", errors, timeout_s=2.5)
    assert settings["error_cb"] is errors and settings["log_level"] == TOOL_LOG_LEVEL
    assert settings["message.timeout.ms"] == 2500 and settings["sasl.password"] == "s3cret"
    assert "error_cb" not in redacted(settings)
    assert "message.timeout.ms" not in tool_settings(kafka, "consumer", errors, timeout_s=1)


def test_configured_properties_win_over_a_commands_quiet_defaults() -> None:
    kafka = KafkaConfig(bootstrap_servers="b:9092", properties={"log_level": 7},
                        producer_properties={"message.timeout.ms": 60_000})
    settings = tool_settings(kafka, "producer", ClientErrors(), timeout_s=2)
    assert (settings["log_level"], settings["message.timeout.ms"]) == (7, 60_000)


def test_client_errors_keep_the_latest_for_the_message() -> None:
    class Error:
        def __init__(self, text: str) -> None:
            self.text = text

        def str(self) -> str:
            return self.text

    errors = ClientErrors()
    assert errors.explain("no acknowledgement") == "no acknowledgement"
    errors(Error("b:9092/bootstrap: Connect failed"))  # type: ignore[arg-type]
    errors(Error("1/1 brokers are down"))  # type: ignore[arg-type]
    assert errors.count == 2
    assert errors.explain("no acknowledgement") == \
        "no acknowledgement (last Kafka error: 1/1 brokers are down)"


def test_settings_librdkafka_refuses_are_a_configuration_error() -> None:
    kafka = KafkaConfig(bootstrap_servers="127.0.0.1:9", producer_properties={"bogus.prop": 1})
    with pytest.raises(ConfigError, match=r"bogus\.prop"):
        Publisher(client_settings(kafka, "producer"))
