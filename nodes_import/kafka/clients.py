"""librdkafka settings from the configuration, and creating a client with them.

``client_settings``: ``kafka.properties`` (every client: security.protocol, SASL, TLS) and
over it the ``kafka.consumer`` / ``kafka.producer`` properties pass through unchanged.
``tool_settings``: the same for a command's short-lived client, quiet, its errors kept by
a ``ClientErrors``. ``create``: a client, refused settings as a ``ConfigError``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from nodes_import.config import KafkaConfig
from nodes_import.errors import ConfigError

log = logging.getLogger(__name__)


# Defaults that user properties may override.
CONSUMER_DEFAULTS: dict[str, Any] = {
    "auto.offset.reset": "earliest",  # a new group starts at the oldest job (and Tansu's
                                      # ListOffsets(latest) is unreliable)
}
# What at-least-once rests on: offsets are committed only for finished jobs. Not
# overridable: an auto-commit would commit messages whose jobs never ran.
CONSUMER_FIXED: dict[str, Any] = {"enable.auto.commit": False,
                                  "enable.auto.offset.store": False}
PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
}
# Properties whose values are secrets: never logged.
SECRET_KEYS = ("sasl.password", "ssl.key.password", "ssl.keystore.password",
               "sasl.oauthbearer.client.secret")


def client_settings(kafka: KafkaConfig, kind: str, *, bootstrap: str | None = None,
                    group_id: str | None = None) -> dict[str, Any]:
    """librdkafka settings for a ``consumer`` or ``producer`` from the configuration.

    Later wins: the defaults of ``kind``, ``kafka.properties`` (every client), then
    ``kafka.consumer.properties`` or ``kafka.producer.properties``; for a consumer,
    ``CONSUMER_FIXED`` over all.
    """
    servers = bootstrap or kafka.bootstrap_servers
    if not servers:
        raise ConfigError("no Kafka bootstrap servers configured: set kafka.bootstrap-servers "
                          "(NODES_IMPORT_KAFKA_BOOTSTRAP_SERVERS) or pass --bootstrap-server "
                          "(a daemon running on the local broker prints its address when it "
                          "starts)")
    settings: dict[str, Any] = {"bootstrap.servers": servers,
                                "logger": logging.getLogger("librdkafka")}
    if kind == "consumer":
        settings.update(CONSUMER_DEFAULTS)
        settings["group.id"] = group_id or kafka.group_id
        own = {**kafka.properties, **kafka.consumer_properties}
        settings.update(own)
        for key, value in CONSUMER_FIXED.items():
            if key in own and own[key] != value:
                log.warning("consumer property ignored: the daemon commits offsets itself",
                            extra={"fields": {"property": key}})
            settings[key] = value
    else:
        settings.update(PRODUCER_DEFAULTS)
        settings.update(kafka.properties)
        settings.update(kafka.producer_properties)
    return settings


# librdkafka's syslog level for a command's short-lived clients: critical and worse only.
# Their errors go to a ClientErrors (error_cb) instead: an unreachable broker is one line
# from the command, not a log line every 50 ms.
TOOL_LOG_LEVEL = 2


class ClientErrors:
    """The ``error_cb`` of a command's client: keeps the latest error instead of logging
    each (librdkafka reports an unreachable broker every few milliseconds)."""

    def __init__(self) -> None:
        self.last: str | None = None
        self.count = 0

    def __call__(self, error: KafkaError) -> None:
        self.last, self.count = str(error.str()), self.count + 1

    def explain(self, text: str) -> str:
        """``text`` with the latest client error, when there was one."""
        return f"{text} (last Kafka error: {self.last})" if self.last else text


def tool_settings(kafka: KafkaConfig, kind: str, errors: ClientErrors, *,
                  timeout_s: float) -> dict[str, Any]:
    """``client_settings`` for a command's short-lived client (``submit``, ``dlq replay``):
    its errors recorded by ``errors``, librdkafka's own log quiet (``TOOL_LOG_LEVEL``), and
    a producer that gives a message up after ``timeout_s``. The configured properties still
    win (``log_level``, ``debug``, ``message.timeout.ms``)."""
    settings = client_settings(kafka, kind)
    configured = {**kafka.properties, **(kafka.consumer_properties if kind == "consumer"
                                        else kafka.producer_properties)}
    quiet: dict[str, Any] = {"log_level": TOOL_LOG_LEVEL}
    if kind == "producer":
        quiet["message.timeout.ms"] = max(1, round(timeout_s * 1000))
    settings.update({k: v for k, v in quiet.items() if k not in configured})
    settings["error_cb"] = errors
    return settings


def create(client: Callable[[dict[str, Any]], Any], settings: Mapping[str, Any]) -> Any:
    """A Consumer or Producer; settings librdkafka refuses are a ``ConfigError`` (exit 2):
    creating a client only fails on its settings, it connects later."""
    try:
        return client(dict(settings))
    except (KafkaException, ValueError) as exc:
        reason = exc.args[0].str() if isinstance(exc, KafkaException) else str(exc)
        raise ConfigError(f"Kafka client settings refused: {reason}") from exc


def redacted(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings fit for a log line: secrets masked, the logger object left out."""
    return {k: ("***" if k in SECRET_KEYS else v) for k, v in settings.items()
            if k not in ("logger", "error_cb")}
