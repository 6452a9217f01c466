"""Configuration: the only module that reads YAML and the environment.

Every setting has a dotted key (``node.import.batch.size``), a type, a default and a meaning,
declared once, on the dataclass field that holds it. Sources are layered, later ones winning:

1. the built-in defaults (the repository's ``config.yaml`` lists every key with its default),
2. the config file (``--config FILE`` or ``NODES_IMPORT_CONFIG``), nested YAML,
3. the environment: ``NODES_IMPORT_`` + the key upper-cased with ``.`` and ``-`` as ``_``
   (``NODES_IMPORT_NODE_IMPORT_BATCH_SIZE=20000``); ``NODES_IMPORT_DSN`` is short for
   ``database.dsn``. There an int may hold ``_`` (``20_000``), a bool is ``1``, ``true``,
   ``yes``, ``on`` or ``0``, ``false``, ``no``, ``off``, a list is ``:``-separated paths or
   a YAML list (``[s3://bucket/in/, https://host/files/]``: URIs hold ``:``) and
   a mapping is YAML (``{sasl.password: x}``) merged key by key into the file's mapping (the
   file's other properties stay; a key set to ``null`` removes the file's),
4. command-line flags (``--dsn``, ``--bootstrap-servers``, ``--admin-port``, ...).

An unknown key in the file, an unknown ``NODES_IMPORT_*`` variable, a refused key, or a value
of the wrong type or out of range stops start-up with an error naming the key (and the
closest known one, for a misspelling): exit 2.

Without ``database.dsn``, PostgreSQL is found as psql finds it: through the libpq
environment when any of its server or login variables is set (``PGHOST``, ``PGHOSTADDR``,
``PGPORT``, ``PGDATABASE``, ``PGUSER``, ``PGPASSWORD``, ``PGPASSFILE``, ``PGSERVICE``,
``PGSERVICEFILE``; libpq then also reads ``~/.pgpass``, the service files and its other
``PG*`` variables). With neither, `import`, `jobs` and `db init` use the embedded PostgreSQL
of the `local` extra (said on stderr), `run` only with ``--local``.
"""

from __future__ import annotations

import difflib
import os
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nodes_import.errors import ConfigError
from nodes_import.settings import (
    MAPPING,
    Retired,
    Setting,
    build_dataclass,
    merge_mapping,
    reference_tables,
    setting,
    table_row,
    walk,
)

ENV_PREFIX = "NODES_IMPORT_"
# Short names for the settings operators set most often.
ENV_ALIASES = {"NODES_IMPORT_DSN": "database.dsn"}
# NODES_IMPORT_* variables that are not keys: known, so not refused as misspellings.
ENV_NOT_KEYS = {
    "NODES_IMPORT_CONFIG": "the config file (`--config`)",
    "NODES_IMPORT_TEST_DSN": "the test suite's PostgreSQL (tests/fixtures/postgres.py)",
    "NODES_IMPORT_PG15_DSN": "CI's PostgreSQL 15 pass (.ci/run)",
    "NODES_IMPORT_HEAVY_TESTS": "the test suite's heavy resilience tests",
    "NODES_IMPORT_BENCH_DATA": "where the benchmarks keep their data",
}
# The libpq variables that name a server or a login: when one is set and no DSN is, the
# database is the one psql would connect to. libpq's other PG* variables (PGSSLMODE,
# PGCONNECT_TIMEOUT, PGAPPNAME, ...) tune a connection but choose none, so they alone do not
# count; nor does a ~/.pgpass or ~/.pg_service.conf file alone (neither names a server
# unless a variable or a DSN selects it).
LIBPQ_VARIABLES = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD",
                   "PGPASSFILE", "PGSERVICE", "PGSERVICEFILE")
# How the reference is regenerated; its first line says so.
REGENERATE = "python -m nodes_import.config > docs/configuration.md"

BACKPRESSURE_MODES = ("pause", "reject")
# fork is excluded: librdkafka runs threads in the daemon, and a forked child inherits them
# half-copied.
START_METHODS = ("spawn", "forkserver")


# Keys of the original design, refused rather than silently ignored.
RETIRED_KEYS: dict[str, Retired] = {
    "kafka.consumer.concurrency": Retired(
        "node.import.executor.max-pool-size",
        "the daemon consumes with one Kafka consumer per process (more daemons consume "
        "more partitions) and runs its jobs on a pool of worker processes"),
    "database.pool.max-size": Retired(
        "node.import.max-parallel-futures",
        "every pool is sized by what uses it (a job: its max-parallel-futures writers + 1, in "
        "each worker and in a one-off import; the daemon's main loop and the admin API: 2; "
        "the jobs commands: 1), so the budget is daemons x workers x (writers + 1) + 4 per "
        "daemon (docs/operations.md)"),
}


def default_allowed_roots() -> tuple[str, ...]:
    """The current directory and the system temp dir, resolved."""
    return (str(Path.cwd().resolve()), str(Path(tempfile.gettempdir()).resolve()))


def default_embedded_dir(environ: Mapping[str, str]) -> str:
    """The user's data directory for the embedded PostgreSQL cluster."""
    base = environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "nodes-import" / "pgdata")


def _allowed_roots(value: list[str], environ: Mapping[str, str]) -> tuple[str, ...]:
    roots = tuple(str(Path(root).expanduser().resolve()) for root in value)
    return roots or default_allowed_roots()


def _embedded_dir(value: str | None, environ: Mapping[str, str]) -> str:
    return value or default_embedded_dir(environ)


def libpq_environment(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The names of ``LIBPQ_VARIABLES`` set (non-empty) in ``environ``."""
    return tuple(name for name in LIBPQ_VARIABLES if environ.get(name))


# -- the settings, one field per key ------------------------------------------------------


# -- remote sources (object storage, HTTPS): pipeline/remote.py, s3.py, http.py --------


def _s3_endpoint(value: str | None, environ: Mapping[str, str]) -> str | None:
    # The AWS SDKs' own variables when no key says (pyarrow's S3 client reads neither).
    return value or environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL") or None


@dataclass(frozen=True)
class S3Config:
    """How ``s3://`` URIs are reached. Credentials are never set here: they come from the
    standard AWS chain (environment, shared credentials and config files, instance role)."""

    endpoint_override: str | None = setting("node.import.s3.endpoint-override", None,
                                            resolve=_s3_endpoint, doc="""
        Endpoint of an S3-compatible store (`http://127.0.0.1:9000`,
        `https://storage.example.com`); null: `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`
        when set, else AWS itself.""")
    region: str | None = setting("node.import.s3.region", None, doc="""
        Region of the buckets; null: the AWS chain's (`AWS_REGION`, `AWS_DEFAULT_REGION`, the
        shared config file), else `us-east-1`.""")
    path_style: bool = setting("node.import.s3.path-style", True, doc="""
        With an endpoint override: path-style addressing (`https://endpoint/bucket/key`, what
        most S3-compatible stores expect); false: virtual-hosted style
        (`https://bucket.endpoint/key`). AWS itself (no override) is always addressed
        virtual-hosted style.""")


@dataclass(frozen=True)
class RemoteConfig:
    """Files in object storage and over HTTPS: which may be read, and how patiently."""

    allowed_uris: tuple[str, ...] = setting("node.import.allowed-uris", [], doc="""
        URI prefixes that remote files and reference-ID files may be read from
        (`s3://bucket/prefix/`, `https://host/path/`; `http://` only when listed so): scheme
        and host must be equal and the path must start with the prefix's path. Checked
        before any request and on every redirect. `[]`: no remote source is allowed.""")
    connect_timeout_ms: int = setting("node.import.remote.connect-timeout.ms", 10_000, doc="""
        Connecting to the S3 endpoint or the HTTPS server; past it the attempt counts as a
        transient error.""")
    read_timeout_ms: int = setting("node.import.remote.read-timeout.ms", 60_000, doc="""
        Waiting for the next bytes of a response; past it the read is resumed.""")
    max_retries: int = setting("node.import.remote.max-retries", 5, doc="""
        Transient read errors in a row (connection reset, timeout, HTTP 5xx or 429) on one
        remote file: each is resumed from the byte offset already read (a ranged request,
        checked against the object's ETag or Last-Modified); one more fails the job.""")
    retry_interval_ms: int = setting("node.import.remote.retry-interval.ms", 500, doc="""
        Wait before the first resume; doubles with each failure in a row, up to 16 times
        this.""")
    s3: S3Config = field(default_factory=S3Config)


@dataclass(frozen=True)
class RetryConfig:
    """The tenacity backoff for transient database errors (seed section 3.7)."""

    max_attempts: int = setting("node.import.retry.max-attempts", 3, doc="""
        Attempts at a database operation that fails with a transient error (lost connection,
        deadlock, serialization failure, timeout), the first one included.""")
    initial_interval_ms: int = setting("node.import.retry.initial-interval", 1000, doc="""
        Wait before the first retry, in milliseconds.""")
    multiplier: float = setting("node.import.retry.multiplier", 2.0, minimum=1.0, doc="""
        Factor the wait grows by after each retry.""")
    max_interval_ms: int = setting("node.import.retry.max-interval", 10_000, doc="""
        Longest wait between retries, in milliseconds.""")


@dataclass(frozen=True)
class ImportConfig:
    """How one job is read and written. Crosses the process boundary: primitives only."""

    batch_size: int = setting("node.import.batch.size", 35_000, doc="""
        Rows per batch, split over the key partitions (one transaction each). The seed's 500
        is 2x slower; 35,000 sits in the flat part of the throughput sweep (~20k to 100k) at
        ~200 MB peak RSS (`benchmarks/README.md`, "Defaults").""")
    block_size_bytes: int = setting("node.import.block-size-bytes", 1 << 20, doc="""
        pyarrow CSV read block (1 MiB). pyarrow reads several blocks ahead, so this sets the
        reader's memory; a single row larger than a block fails the job.""")
    max_parallel_futures: int = setting("node.import.max-parallel-futures", 2, doc="""
        Key partitions, i.e. writer connections, per job (2 cores: one per core).""")
    batch_timeout_ms: int = setting("node.import.timeout.ms", 120_000, doc="""
        Per-batch `statement_timeout` (a 50k-row batch takes ~1-3 s): a slower batch is
        cancelled and retried, then its rows are recorded as failed and the job goes on.""")
    global_timeout_ms: int = setting("node.import.global.timeout.ms", 3_600_000, doc="""
        Whole job: past it the job is FAILED `Timeout exceeded`.""")
    max_reject_ratio: float = setting("node.import.max-reject-ratio", 1.0, minimum=0,
                                      maximum=1, doc="""
        Fail the job once rejected/read rows pass this ratio (1.0: never).""")
    max_file_bytes: int = setting("node.import.max-file-bytes", 10 << 30, doc="""
        Stored (compressed) size limit, 10 GiB: past it the job is FAILED before reading.""")
    max_decompressed_bytes: int = setting("node.import.max-decompressed-bytes", 100 << 30,
                                          doc="""
        Decompressed size limit, 100 GiB: the job is FAILED as soon as the stream passes it
        (GZIP bombs stop early).""")
    max_reference_ids: int = setting("node.import.max-reference-ids", 10_000_000, doc="""
        Reference IDs per job; past it the job is FAILED.""")
    max_rows: int = setting("node.import.max-rows", 100_000_000, doc="""
        Data rows per file; past it the job is FAILED.""")
    max_columns: int = setting("node.import.max-columns", 1000, doc="""
        Header columns; more and the job is FAILED before any row.""")
    max_field_bytes: int = setting("node.import.max-field-bytes", 1 << 20, doc="""
        One cell, 1 MiB; a longer one rejects its row.""")
    allowed_roots: tuple[str, ...] = setting("node.import.allowed-roots", [],
                                             resolve=_allowed_roots, doc="""
        Local files are read only under these directories, after resolving symlinks and `..`;
        `[]`: the current directory and the system temp dir.""")
    default_node_type: str = setting("node.import.default-node-type", "USER", doc="""
        Type of the nodes of a row without a `type` cell, in a job whose message names no
        `nodeType`.""")
    retry: RetryConfig = field(default_factory=RetryConfig)
    remote: RemoteConfig = field(default_factory=RemoteConfig)


@dataclass(frozen=True)
class DatabaseConfig:
    """Where PostgreSQL is. ``dsn=None``: the libpq environment when set, else none (the CLI
    may then choose the embedded server)."""

    dsn: str | None = setting("database.dsn", None, secret=True, doc="""
        PostgreSQL >= 14 connection string (libpq URI or key=value; `sslmode` and the other
        libpq parameters pass through). null: the libpq environment, as psql (`PGHOST`,
        `PGHOSTADDR`, `PGPORT`, `PGDATABASE`, `PGUSER`, `PGPASSWORD`, `PGPASSFILE`,
        `PGSERVICE`, `PGSERVICEFILE`: any one set), else the embedded PostgreSQL of the
        `local` extra for `import`, `jobs` and `db init` (`run` only with `--local`).""")
    embedded_dir: str = setting("database.embedded-dir", None, resolve=_embedded_dir,
                                field_default="", doc="""
        Where the embedded PostgreSQL cluster lives; null: `$XDG_DATA_HOME/nodes-import/pgdata`
        (`~/.local/share/nodes-import/pgdata` without `XDG_DATA_HOME`).""")
    connect_timeout_ms: int = setting("database.connect-timeout.ms", 10_000, doc="""
        Start-up fails past this when the database does not answer; new connections time out
        after it.""")
    # Not a key: which LIBPQ_VARIABLES the environment set when the config was loaded.
    libpq_environment: tuple[str, ...] = ()


@dataclass(frozen=True)
class KafkaConfig:
    """The daemon's Kafka edge. ``bootstrap_servers=None``: none configured (``run`` exits 2
    unless ``--local`` asks for a local broker)."""

    bootstrap_servers: str | None = setting("kafka.bootstrap-servers", None, doc="""
        Kafka `HOST:PORT[,...]` (also `--bootstrap-server(s)`). null: `run` exits 2, unless
        `run --local` (or `demo`) starts a local Tansu broker (in memory: for trying things
        out).""")
    topic_pattern: str = setting("kafka.topic-pattern", "^.*-users", doc="""
        Regular expression of the job topics (`^` added if missing); new topics are seen on
        the next metadata refresh (`topic.metadata.refresh.interval.ms`, librdkafka default
        5 min).""")
    group_id: str = setting("kafka.group-id", "nodes-import-group", doc="""
        Consumer group shared by all daemons (`<group-id>-dlq-replay` records what
        `dlq replay` replayed).""")
    dlq_topic: str = setting("kafka.dlq-topic", "users-import-dlq", doc="""
        Dead-letter topic of rejected messages and FAILED jobs (must not match
        `kafka.topic-pattern`).""")
    properties: Mapping[str, Any] = setting("kafka.properties", {}, secret=True, doc="""
        librdkafka properties of every client (consumer and producer), passed through:
        where `security.protocol`, `sasl.*` and `ssl.*` are written once.
        `kafka.consumer.properties` and `kafka.producer.properties` override them key by
        key.""")
    consumer_properties: Mapping[str, Any] = setting("kafka.consumer.properties", {},
                                                     secret=True, doc="""
        librdkafka consumer properties, over `kafka.properties` (`session.timeout.ms`,
        `group.instance.id`, ...); default `auto.offset.reset=earliest`.
        `enable.auto.commit` and `enable.auto.offset.store` are always false (a warning if
        set): at-least-once rests on committing only finished jobs.""")
    producer_properties: Mapping[str, Any] = setting("kafka.producer.properties", {},
                                                     secret=True, doc="""
        librdkafka producer properties (dead letters, `submit`), over `kafka.properties`;
        defaults `enable.idempotence=true`, `acks=all`, `linger.ms=5`.""")
    startup_timeout_ms: int = setting("kafka.startup-timeout.ms", 15_000, doc="""
        Start-up fails past this when the broker does not answer; `submit` and `dlq replay`
        give up after it too.""")
    submit_topic: str = setting("kafka.submit-topic", "nodes-import-users", doc="""
        Where `nodes-import submit` produces unless `--topic` says (must match
        `kafka.topic-pattern`).""")
    max_message_bytes: int = setting("kafka.max-message-bytes", 1 << 20, doc="""
        A larger job message is dead-lettered unread, and `submit` refuses it. 1 MiB is Kafka's
        own default limit (~25,000 reference IDs of 36 characters); raise it together with the
        broker's and the topic's.""")


@dataclass(frozen=True)
class ExecutorConfig:
    """The daemon's process pool, its bounded window of jobs, leases and circuit breaker."""

    core_pool_size: int = setting("node.import.executor.core-pool-size", 2, doc="""
        Worker processes started (and warmed up) at start-up.""")
    max_pool_size: int = setting("node.import.executor.max-pool-size", 2, doc="""
        Worker processes per daemon, each running one job (or one bundle of small jobs) at a
        time.""")
    small_job_workers: int = setting("node.import.executor.small-job-workers", 1,
                                     minimum=0, doc="""
        Workers that never start a large job (a file, or more than 1,000 reference IDs), so
        that small jobs never wait behind large ones; large jobs run on the other
        `max-pool-size` minus this (at least one). 0: first come, first served.""")
    queue_capacity: int = setting("node.import.executor.queue-capacity", 100, doc="""
        Jobs accepted but not finished per daemon (running or waiting for a worker): the
        backpressure window.""")
    backpressure: str = setting("node.import.backpressure", "pause",
                                choices=BACKPRESSURE_MODES, doc="""
        When the window is full: `pause` the partitions until there is room (no job fails
        because the service is busy), or `reject` (the seed's: the job is FAILED
        `System overloaded` and dead-lettered).""")
    drain_timeout_ms: int = setting("node.import.drain-timeout.ms", 30_000, doc="""
        On SIGTERM, how long running jobs may take to commit their in-flight batch; past it
        the workers are killed and their open batch rolls back.""")
    start_method: str = setting("node.import.executor.start-method", "spawn",
                                choices=START_METHODS, doc="""
        How worker processes start; never `fork`: librdkafka runs threads in the daemon.""")
    max_job_crashes: int = setting("node.import.executor.max-job-crashes", 3, doc="""
        A job whose worker process dies this often is FAILED.""")
    lease_timeout_ms: int = setting("node.import.lease-timeout.ms", 30_000, doc="""
        A job whose daemon stopped renewing its lease this long may be taken over.""")
    heartbeat_interval_ms: int = setting("node.import.heartbeat-interval.ms", 5_000, doc="""
        How often a daemon renews the leases of its jobs; at most half of
        `node.import.lease-timeout.ms`.""")
    # The database circuit breaker (daemon/breaker.py): consecutive failures that open it,
    # and the probe backoff while it is open.
    breaker_failure_threshold: int = setting("node.import.breaker.failure-threshold", 3, doc="""
        Consecutive database outage errors (not data errors) that open the circuit breaker:
        no job starts and consumption pauses while it is open.""")
    breaker_probe_initial_ms: int = setting("node.import.breaker.probe-initial.ms", 1_000,
                                            doc="""
        First probe of the database this long after the breaker opens; doubles after each
        failed probe.""")
    breaker_probe_max_ms: int = setting("node.import.breaker.probe-max.ms", 30_000, doc="""
        Longest wait between probes; at least `node.import.breaker.probe-initial.ms`.""")


@dataclass(frozen=True)
class OperationsConfig:
    """The parent's operations side: admin HTTP API, metrics, housekeeping."""

    admin_enabled: bool = setting("admin.enabled", True, doc="""
        Serve the admin HTTP API of `nodes-import run` (`/metrics`, `/healthz`, `/readyz`,
        `/jobs`, the jobs page `/`).""")
    admin_host: str = setting("admin.host", "127.0.0.1", doc="""
        Address of the admin API; `0.0.0.0` lets a remote Prometheus scrape it (the API is
        read-only but for `POST /jobs/{id}/cancel`, which needs `admin.token`).""")
    admin_port: int = setting("admin.port", 9400, maximum=65535, doc="""
        Port of the admin API (also `nodes-import run --admin-port N`).""")
    admin_token: str | None = setting("admin.token", None, secret=True, doc="""
        A bearer token every route but `/healthz` and `/readyz` requires
        (`Authorization: Bearer <token>`; a browser: HTTP Basic, the token as the password);
        null: none, and no job can be cancelled through the API.""")
    group_label: bool = setting("metrics.labels.group", True, doc="""
        `node_import_success`/`node_import_failures` carry the job's group: one series per
        group per worker process; switch off when there are many groups (the label is then
        empty).""")
    domain_label: bool = setting("metrics.labels.domain", True, doc="""
        ... and the job's domain; switch off when there are many domains.""")
    multiproc_dir: str | None = setting("metrics.multiproc-dir", None, doc="""
        Directory of the Prometheus multiprocess files; null: a private temp dir per daemon
        run. A configured one is emptied of old files at start and stop: two daemons must
        never share it.""")
    retention_enabled: bool = setting("node.import.retention.enabled", False, doc="""
        The daemon deletes old COMPLETED/FAILED jobs itself (as `nodes-import jobs purge`
        does).""")
    retention_days: int = setting("node.import.retention.days", 30, doc="""
        Jobs that finished more than this many days ago are deleted.""")
    retention_interval_ms: int = setting("node.import.retention.interval.ms", 3_600_000,
                                         doc="""
        How often the daemon looks (and once at start).""")
    retention_batch_size: int = setting("node.import.retention.batch-size", 500, doc="""
        Jobs deleted per transaction.""")
    long_running_warning_ms: int = setting("node.import.long-running-warning.ms", 1_800_000,
                                           doc="""
        A PROCESSING job older than this is logged as a warning (once per job and daemon
        run).""")


@dataclass(frozen=True)
class Config:
    """The whole configuration, frozen once loaded.

    A field whose type is a dataclass is a section; its fields declare the keys.
    """

    database: DatabaseConfig
    kafka: KafkaConfig
    executor: ExecutorConfig
    imports: ImportConfig
    # The flat, validated key -> value map. Out of repr (as every field that can hold a
    # secret: DSN, client properties, admin token), so a logged config shows none.
    values: Mapping[str, Any] = field(repr=False)
    operations: OperationsConfig = field(default_factory=OperationsConfig)


# -- derived from the fields ---------------------------------------------------------------


# key -> its Setting, in declaration order; attribute path under Config -> Setting.
PATHS: dict[tuple[str, ...], Setting] = {p: s for p, s in walk(Config) if isinstance(s, Setting)}
SETTINGS: dict[str, Setting] = {spec.key: spec for spec in PATHS.values()}
if len(SETTINGS) != len(PATHS):  # pragma: no cover - a declaration error, caught at import
    raise AssertionError("a configuration key is declared on two fields")

# key -> (type, default). Types: int, float, str, bool, "str?" (optional str), "list[str]",
# "mapping".
KEYS: dict[str, tuple[Any, Any]] = {key: (s.kind, s.default) for key, s in SETTINGS.items()}


def env_name(key: str) -> str:
    """The environment variable of ``key``: ``NODES_IMPORT_`` + KEY with ``.``/``-`` as ``_``."""
    return ENV_PREFIX + key.upper().replace(".", "_").replace("-", "_")


def env_key_map() -> dict[str, str]:
    """Environment variable name -> dotted key."""
    names = {env_name(key): key for key in SETTINGS}
    names.update(ENV_ALIASES)
    return names


# -- loading -------------------------------------------------------------------------------


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested YAML mapping -> dotted keys. Free-form mappings stay whole."""
    flat: dict[str, Any] = {}
    for name, value in tree.items():
        key = f"{prefix}{name}"
        spec = SETTINGS.get(key)
        if spec is not None and spec.kind == MAPPING:
            flat[key] = value
        elif isinstance(value, Mapping):
            flat.update(flatten(value, key + "."))
        else:
            flat[key] = value
    return flat


def closest(name: str, known: list[str] | dict[str, Any]) -> str:
    """`` (did you mean X?)`` for the known name closest to a misspelt ``name``, else ``""``."""
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {match[0]}?)" if match else ""


def read_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a YAML config file into dotted keys, rejecting unknown and refused ones."""
    import yaml  # only when there is a file: most commands start without one

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
    refused = sorted(set(flat) & set(RETIRED_KEYS))
    if refused:
        raise ConfigError(f"config file {path}: {RETIRED_KEYS[refused[0]].message(refused[0])}")
    unknown = sorted(set(flat) - set(SETTINGS))
    if unknown:
        named = ", ".join(key + closest(key, SETTINGS) for key in unknown)
        raise ConfigError(f"config file {path}: unknown key(s): {named}")
    return {key: SETTINGS[key].coerce(value, from_text=False) for key, value in flat.items()}


def read_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """The keys set in the environment, coerced from text; a refused key or an unknown
    ``NODES_IMPORT_*`` variable is an error."""
    for key, retired in RETIRED_KEYS.items():
        if env_name(key) in environ:
            raise ConfigError(f"{env_name(key)}: {retired.message(key)}")
    names = env_key_map()
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in names and name not in ENV_NOT_KEYS:
            # Compared without the prefix every name shares, which would make all close.
            suffixes = {known.removeprefix(ENV_PREFIX): known for known in names}
            match = difflib.get_close_matches(name.removeprefix(ENV_PREFIX), list(suffixes),
                                              n=1, cutoff=0.6)
            hint = ""
            if match:
                hint = f" (did you mean {suffixes[match[0]]}, for {names[suffixes[match[0]]]}?)"
            raise ConfigError(f"{name}: not a configuration variable{hint}")
    return {key: SETTINGS[key].coerce(environ[name], from_text=True)
            for name, key in names.items() if name in environ}


def _layer(values: dict[str, Any], layer: Mapping[str, Any]) -> None:
    """Set ``layer``'s keys in ``values``; a mapping merges key by key into the one below."""
    for key, value in layer.items():
        if SETTINGS[key].kind == MAPPING:
            values[key] = merge_mapping(values[key], value)
        else:
            values[key] = value


def load(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the configuration from defaults, file, environment and flags."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {key: spec.default for key, spec in SETTINGS.items()}
    path = path or env.get("NODES_IMPORT_CONFIG")
    if path:
        _layer(values, read_file(path))
    _layer(values, read_environment(env))
    flags: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if key in RETIRED_KEYS:
            raise ConfigError(RETIRED_KEYS[key].message(key))
        if key not in SETTINGS:
            raise ConfigError(f"unknown key: {key}{closest(key, SETTINGS)}")
        if value is not None:
            flags[key] = SETTINGS[key].coerce(value, from_text=False)
    _layer(values, flags)
    return build(values, env)


def _check(values: Mapping[str, Any]) -> None:
    """Each key's own checks, then the rules that tie two keys together."""
    for key, spec in SETTINGS.items():
        spec.check(values[key])
    if values["node.import.heartbeat-interval.ms"] * 2 > values["node.import.lease-timeout.ms"]:
        raise ConfigError("node.import.heartbeat-interval.ms: must be at most half of "
                          "node.import.lease-timeout.ms, or live leases expire")
    if values["node.import.breaker.probe-max.ms"] < values["node.import.breaker.probe-initial.ms"]:
        raise ConfigError("node.import.breaker.probe-max.ms: must be at least "
                          "node.import.breaker.probe-initial.ms")


def build(values: Mapping[str, Any], environ: Mapping[str, str]) -> Config:
    """Validated flat values -> the frozen ``Config``."""
    _check(values)
    config: Config = build_dataclass(Config, values, environ, {"values": dict(values)})
    database = replace(config.database, libpq_environment=libpq_environment(environ))
    return replace(config, database=database)


# -- the reference -------------------------------------------------------------------------


def reference_markdown() -> str:
    """docs/configuration.md: one table per section, from the field declarations."""
    aliases = {key: name for name, key in ENV_ALIASES.items()}

    def env_text(key: str) -> str:
        return f"`{env_name(key)}`" + (f" or `{aliases[key]}`" if key in aliases else "")

    intro = (__doc__ or "").split("\n\n", 1)[1].replace("``", "`").strip()
    lines = [f"> Generated by `{REGENERATE}` from the field declarations in",
             "> `nodes_import/config.py`; do not edit.", "",
             "# Configuration reference", "", intro]
    lines += reference_tables(Config, env_text)
    lines += ["", "## Refused keys", "",
              "Keys of the original design that this service does not read: set in the file,",
              "the environment or a flag, each stops start-up with an error saying what to",
              "set instead.", "",
              table_row(["key", "environment variable", "instead"]), table_row(["---"] * 3)]
    for key, retired in RETIRED_KEYS.items():
        lines.append(table_row([f"`{key}`", f"`{env_name(key)}`",
                                f"`{retired.replacement}`: {retired.why}"]))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(reference_markdown())
