"""Configuration: the only module that reads YAML and the environment.

Every setting has a dotted key (``node.import.batch.size``), a type and a default.
Sources are layered, later ones winning:

1. built-in defaults (``KEYS`` below, mirrored in the repository's ``config.yaml``),
2. the config file (``--config`` or ``NODES_IMPORT_CONFIG``), nested YAML,
3. the environment: ``NODES_IMPORT_`` + the key upper-cased with ``.`` and ``-`` as ``_``
   (``NODES_IMPORT_NODE_IMPORT_BATCH_SIZE=20000``); ``NODES_IMPORT_DSN`` is short for
   ``database.dsn``,
4. command-line flags (passed in as ``overrides``).

An unknown key or a value of the wrong type is a ``ConfigError`` naming the key.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nodes_import.errors import ConfigError

ENV_PREFIX = "NODES_IMPORT_"
# Short names for the settings operators set most often.
ENV_ALIASES = {"NODES_IMPORT_DSN": "database.dsn"}

_MAPPING = "mapping"  # a free-form mapping passed through (librdkafka properties)
_STR_LIST = "list[str]"

# key -> (type, default). Types: int, float, str, bool, "str?" (optional str),
# _STR_LIST, _MAPPING.
KEYS: dict[str, tuple[Any, Any]] = {
    # -- database
    "database.dsn": ("str?", None),
    "database.embedded-dir": ("str?", None),
    "database.pool.max-size": (int, 4),
    "database.connect-timeout.ms": (int, 10_000),
    # -- kafka (the seed's consumer plus the daemon's settings)
    "kafka.bootstrap-servers": ("str?", None),
    "kafka.topic-pattern": (str, "^.*-users"),
    "kafka.group-id": (str, "nodes-import-group"),
    "kafka.dlq-topic": (str, "users-import-dlq"),
    "kafka.consumer.concurrency": (int, 4),
    "kafka.consumer.properties": (_MAPPING, {}),
    "kafka.producer.properties": (_MAPPING, {}),
    "kafka.startup-timeout.ms": (int, 15_000),
    "kafka.submit-topic": (str, "nodes-import-users"),
    "kafka.max-message-bytes": (int, 1 << 20),
    # -- the import engine (seed section 8, and this service's additions)
    "node.import.timeout.ms": (int, 120_000),
    "node.import.global.timeout.ms": (int, 3_600_000),
    "node.import.executor.core-pool-size": (int, 2),
    "node.import.executor.max-pool-size": (int, 2),
    "node.import.executor.queue-capacity": (int, 100),
    "node.import.backpressure": (str, "pause"),
    "node.import.drain-timeout.ms": (int, 30_000),
    "node.import.executor.start-method": (str, "spawn"),
    "node.import.executor.max-job-crashes": (int, 3),
    "node.import.lease-timeout.ms": (int, 30_000),
    "node.import.heartbeat-interval.ms": (int, 5_000),
    "node.import.breaker.failure-threshold": (int, 3),
    "node.import.breaker.probe-initial.ms": (int, 1_000),
    "node.import.breaker.probe-max.ms": (int, 30_000),
    "node.import.batch.size": (int, 35_000),
    "node.import.block-size-bytes": (int, 1 << 20),
    "node.import.retry.max-attempts": (int, 3),
    "node.import.retry.initial-interval": (int, 1000),
    "node.import.retry.multiplier": (float, 2.0),
    "node.import.retry.max-interval": (int, 10_000),
    "node.import.max-parallel-futures": (int, 2),
    "node.import.max-reject-ratio": (float, 1.0),
    "node.import.max-file-bytes": (int, 10 << 30),
    "node.import.max-decompressed-bytes": (int, 100 << 30),
    "node.import.max-reference-ids": (int, 10_000_000),
    "node.import.max-rows": (int, 100_000_000),
    "node.import.max-columns": (int, 1000),
    "node.import.max-field-bytes": (int, 1 << 20),
    "node.import.allowed-roots": (_STR_LIST, []),
    "node.import.default-node-type": (str, "USER"),
    # -- operations (issue 4): housekeeping, the admin HTTP API, metrics
    "node.import.retention.enabled": (bool, False),
    "node.import.retention.days": (int, 30),
    "node.import.retention.interval.ms": (int, 3_600_000),
    "node.import.retention.batch-size": (int, 500),
    "node.import.long-running-warning.ms": (int, 1_800_000),
    "admin.enabled": (bool, True),
    "admin.host": (str, "127.0.0.1"),
    "admin.port": (int, 9400),
    "admin.token": ("str?", None),
    "metrics.labels.group": (bool, True),
    "metrics.labels.domain": (bool, True),
    "metrics.multiproc-dir": ("str?", None),
}

BACKPRESSURE_MODES = ("pause", "reject")
# fork is excluded: librdkafka runs threads in the daemon, and a forked child inherits them
# half-copied.
START_METHODS = ("spawn", "forkserver")


@dataclass(frozen=True)
class RetryConfig:
    """tenacity policy for transient database errors (seed section 3.7)."""

    max_attempts: int = 3
    initial_interval_ms: int = 1000
    multiplier: float = 2.0
    max_interval_ms: int = 10_000


@dataclass(frozen=True)
class ImportConfig:
    """How one job is read and written. Crosses the process boundary: primitives only."""

    batch_size: int = 35_000
    block_size_bytes: int = 1 << 20
    max_parallel_futures: int = 2
    batch_timeout_ms: int = 120_000
    global_timeout_ms: int = 3_600_000
    max_reject_ratio: float = 1.0
    max_file_bytes: int = 10 << 30
    max_decompressed_bytes: int = 100 << 30
    max_reference_ids: int = 10_000_000
    max_rows: int = 100_000_000
    max_columns: int = 1000
    max_field_bytes: int = 1 << 20
    allowed_roots: tuple[str, ...] = ()
    default_node_type: str = "USER"
    retry: RetryConfig = field(default_factory=RetryConfig)


@dataclass(frozen=True)
class DatabaseConfig:
    """Where PostgreSQL is. ``dsn=None`` means the embedded server."""

    dsn: str | None = field(default=None, repr=False)
    embedded_dir: str = ""
    pool_max_size: int = 4
    connect_timeout_ms: int = 10_000


@dataclass(frozen=True)
class KafkaConfig:
    """The daemon's Kafka edge. ``bootstrap_servers=None`` means the local broker."""

    bootstrap_servers: str | None = None
    topic_pattern: str = "^.*-users"
    group_id: str = "nodes-import-group"
    dlq_topic: str = "users-import-dlq"
    concurrency: int = 4
    consumer_properties: Mapping[str, Any] = field(default_factory=dict, repr=False)
    producer_properties: Mapping[str, Any] = field(default_factory=dict, repr=False)
    startup_timeout_ms: int = 15_000
    submit_topic: str = "nodes-import-users"
    max_message_bytes: int = 1 << 20  # a larger job message is dead-lettered unread


@dataclass(frozen=True)
class ExecutorConfig:
    """The daemon's process pool and its bounded queue."""

    core_pool_size: int = 2
    max_pool_size: int = 2
    queue_capacity: int = 100
    backpressure: str = "pause"
    drain_timeout_ms: int = 30_000
    start_method: str = "spawn"
    max_job_crashes: int = 3
    lease_timeout_ms: int = 30_000
    heartbeat_interval_ms: int = 5_000
    # The database circuit breaker (breaker.py): consecutive failures that open it, and the
    # probe backoff while it is open.
    breaker_failure_threshold: int = 3
    breaker_probe_initial_ms: int = 1_000
    breaker_probe_max_ms: int = 30_000


@dataclass(frozen=True)
class OperationsConfig:
    """The parent's operations side: admin HTTP API, metrics, housekeeping."""

    admin_enabled: bool = True
    admin_host: str = "127.0.0.1"
    admin_port: int = 9400
    # When set, every route but /healthz and /readyz needs "Authorization: Bearer <token>".
    admin_token: str | None = field(default=None, repr=False)
    group_label: bool = True  # node_import_success/failures carry the job's group
    domain_label: bool = True  # ... and its domain
    multiproc_dir: str | None = None  # None: a private temp dir per daemon run
    retention_enabled: bool = False
    retention_days: int = 30
    retention_interval_ms: int = 3_600_000
    retention_batch_size: int = 500
    long_running_warning_ms: int = 1_800_000


@dataclass(frozen=True)
class Config:
    """The whole configuration, frozen once loaded."""

    database: DatabaseConfig
    kafka: KafkaConfig
    executor: ExecutorConfig
    imports: ImportConfig
    # The flat, validated key -> value map. Out of repr (as every field that can hold a
    # secret: DSN, client properties, admin token), so a logged config shows none.
    values: Mapping[str, Any] = field(repr=False)
    operations: OperationsConfig = field(default_factory=OperationsConfig)


def default_allowed_roots() -> tuple[str, ...]:
    """The current directory and the system temp dir, resolved."""
    return (str(Path.cwd().resolve()), str(Path(tempfile.gettempdir()).resolve()))


def default_embedded_dir(environ: Mapping[str, str]) -> str:
    """The user's data directory for the embedded PostgreSQL cluster."""
    base = environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "nodes-import" / "pgdata")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested YAML mapping -> dotted keys. Free-form mappings stay whole."""
    flat: dict[str, Any] = {}
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if KEYS.get(key, (None,))[0] == _MAPPING:
            flat[key] = value
        elif isinstance(value, Mapping):
            flat.update(flatten(value, key + "."))
        else:
            flat[key] = value
    return flat


def _coerce(key: str, value: Any, *, from_text: bool) -> Any:
    kind = KEYS[key][0]
    if value is None:
        if kind == "str?":
            return None
        raise ConfigError(f"{key}: a value is required")
    try:
        if kind == "str?" or kind is str:
            if not isinstance(value, str):
                raise TypeError
            return value
        if kind is bool:
            if from_text and isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
            if not isinstance(value, bool):
                raise TypeError
            return value
        if kind is int:
            if from_text and isinstance(value, str):
                return int(value.replace("_", ""))
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError
            return value
        if kind is float:
            if from_text and isinstance(value, str):
                return float(value)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError
            return float(value)
        if kind == _STR_LIST:
            if from_text and isinstance(value, str):
                return [part for part in value.split(os.pathsep) if part]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise TypeError
            return list(value)
        if kind == _MAPPING:
            if from_text and isinstance(value, str):
                value = yaml.safe_load(value) or {}
            if not isinstance(value, Mapping):
                raise TypeError
            return {str(k): v for k, v in value.items()}
    except (TypeError, ValueError) as exc:
        name = kind if isinstance(kind, str) else kind.__name__
        raise ConfigError(f"{key}: expected {name}, got {value!r}") from exc
    raise AssertionError(f"unhandled config type {kind!r}")


def env_key_map() -> dict[str, str]:
    """Environment variable name -> dotted key."""
    names = {ENV_PREFIX + key.upper().replace(".", "_").replace("-", "_"): key for key in KEYS}
    names.update(ENV_ALIASES)
    return names


def read_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a YAML config file into dotted keys, rejecting unknown ones."""
    try:
        with open(path, encoding="utf-8") as handle:
            tree = yaml.safe_load(handle) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(tree, Mapping):
        raise ConfigError(f"config file {path}: the top level must be a mapping")
    flat = flatten(tree)
    unknown = sorted(set(flat) - set(KEYS))
    if unknown:
        raise ConfigError(f"config file {path}: unknown key(s): {', '.join(unknown)}")
    return {key: _coerce(key, value, from_text=False) for key, value in flat.items()}


def load(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the configuration from defaults, file, environment and flags."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {key: default for key, (_, default) in KEYS.items()}
    path = path or env.get("NODES_IMPORT_CONFIG")
    if path:
        values.update(read_file(path))
    for name, key in env_key_map().items():
        if name in env:
            values[key] = _coerce(key, env[name], from_text=True)
    for key, value in (overrides or {}).items():
        if key not in KEYS:
            raise ConfigError(f"unknown key: {key}")
        if value is not None:
            values[key] = _coerce(key, value, from_text=False)
    return build(values, env)


def _check(values: Mapping[str, Any]) -> None:
    positive = [k for k, (kind, _) in KEYS.items() if kind is int]
    for key in positive:
        if values[key] <= 0:
            raise ConfigError(f"{key}: must be positive, got {values[key]}")
    ratio = values["node.import.max-reject-ratio"]
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"node.import.max-reject-ratio: must be within 0..1, got {ratio}")
    if values["node.import.retry.multiplier"] < 1.0:
        raise ConfigError("node.import.retry.multiplier: must be at least 1.0")
    if values["node.import.backpressure"] not in BACKPRESSURE_MODES:
        raise ConfigError(
            f"node.import.backpressure: one of {', '.join(BACKPRESSURE_MODES)}, "
            f"got {values['node.import.backpressure']!r}"
        )
    if values["node.import.executor.start-method"] not in START_METHODS:
        raise ConfigError(
            f"node.import.executor.start-method: one of {', '.join(START_METHODS)}, "
            f"got {values['node.import.executor.start-method']!r}"
        )
    if values["admin.port"] > 65535:
        raise ConfigError(f"admin.port: must be at most 65535, got {values['admin.port']}")
    if values["node.import.heartbeat-interval.ms"] * 2 > values["node.import.lease-timeout.ms"]:
        raise ConfigError("node.import.heartbeat-interval.ms: must be at most half of "
                          "node.import.lease-timeout.ms, or live leases expire")
    if values["node.import.breaker.probe-max.ms"] < values["node.import.breaker.probe-initial.ms"]:
        raise ConfigError("node.import.breaker.probe-max.ms: must be at least "
                          "node.import.breaker.probe-initial.ms")


def build(values: Mapping[str, Any], environ: Mapping[str, str]) -> Config:
    """Validated flat values -> the frozen ``Config``."""
    _check(values)
    v = values
    roots = tuple(str(Path(r).expanduser().resolve()) for r in v["node.import.allowed-roots"])
    imports = ImportConfig(
        batch_size=v["node.import.batch.size"],
        block_size_bytes=v["node.import.block-size-bytes"],
        max_parallel_futures=v["node.import.max-parallel-futures"],
        batch_timeout_ms=v["node.import.timeout.ms"],
        global_timeout_ms=v["node.import.global.timeout.ms"],
        max_reject_ratio=v["node.import.max-reject-ratio"],
        max_file_bytes=v["node.import.max-file-bytes"],
        max_decompressed_bytes=v["node.import.max-decompressed-bytes"],
        max_reference_ids=v["node.import.max-reference-ids"],
        max_rows=v["node.import.max-rows"],
        max_columns=v["node.import.max-columns"],
        max_field_bytes=v["node.import.max-field-bytes"],
        allowed_roots=roots or default_allowed_roots(),
        default_node_type=v["node.import.default-node-type"],
        retry=RetryConfig(
            max_attempts=v["node.import.retry.max-attempts"],
            initial_interval_ms=v["node.import.retry.initial-interval"],
            multiplier=v["node.import.retry.multiplier"],
            max_interval_ms=v["node.import.retry.max-interval"],
        ),
    )
    database = DatabaseConfig(
        dsn=v["database.dsn"] or None,
        embedded_dir=v["database.embedded-dir"] or default_embedded_dir(environ),
        pool_max_size=v["database.pool.max-size"],
        connect_timeout_ms=v["database.connect-timeout.ms"],
    )
    kafka = KafkaConfig(
        bootstrap_servers=v["kafka.bootstrap-servers"] or None,
        topic_pattern=v["kafka.topic-pattern"],
        group_id=v["kafka.group-id"],
        dlq_topic=v["kafka.dlq-topic"],
        concurrency=v["kafka.consumer.concurrency"],
        consumer_properties=dict(v["kafka.consumer.properties"]),
        producer_properties=dict(v["kafka.producer.properties"]),
        startup_timeout_ms=v["kafka.startup-timeout.ms"],
        submit_topic=v["kafka.submit-topic"],
        max_message_bytes=v["kafka.max-message-bytes"],
    )
    executor = ExecutorConfig(
        core_pool_size=v["node.import.executor.core-pool-size"],
        max_pool_size=v["node.import.executor.max-pool-size"],
        queue_capacity=v["node.import.executor.queue-capacity"],
        backpressure=v["node.import.backpressure"],
        drain_timeout_ms=v["node.import.drain-timeout.ms"],
        start_method=v["node.import.executor.start-method"],
        max_job_crashes=v["node.import.executor.max-job-crashes"],
        lease_timeout_ms=v["node.import.lease-timeout.ms"],
        heartbeat_interval_ms=v["node.import.heartbeat-interval.ms"],
        breaker_failure_threshold=v["node.import.breaker.failure-threshold"],
        breaker_probe_initial_ms=v["node.import.breaker.probe-initial.ms"],
        breaker_probe_max_ms=v["node.import.breaker.probe-max.ms"],
    )
    operations = OperationsConfig(
        admin_enabled=v["admin.enabled"],
        admin_host=v["admin.host"],
        admin_port=v["admin.port"],
        admin_token=v["admin.token"] or None,
        group_label=v["metrics.labels.group"],
        domain_label=v["metrics.labels.domain"],
        multiproc_dir=v["metrics.multiproc-dir"] or None,
        retention_enabled=v["node.import.retention.enabled"],
        retention_days=v["node.import.retention.days"],
        retention_interval_ms=v["node.import.retention.interval.ms"],
        retention_batch_size=v["node.import.retention.batch-size"],
        long_running_warning_ms=v["node.import.long-running-warning.ms"],
    )
    return Config(database, kafka, executor, imports, dict(values), operations)
