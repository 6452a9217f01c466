"""The Kafka-side commands of ``nodes-import``: ``submit`` (one job message) and ``dlq``
(the dead-letter topic). Loaded by ``cli.main`` when the command line names them (see
``cli.COMMANDS``); the Kafka client is imported inside each command, so the other
commands never load it."""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from nodes_import.cli import follow
from nodes_import.cli.common import BOOTSTRAP_FLAGS, EXIT_USAGE, fail, fail_on, load
from nodes_import.errors import NodesImportError
from nodes_import.jobs import new_job_id

BOOTSTRAP_HELP = "Kafka HOST:PORT list (default: kafka.bootstrap-servers)."


def _ids_file_or_uri(ctx: click.Context, param: click.Parameter,
                     value: str | None) -> str | None:
    """``--reference-ids``: a URI as it is, else a local file that must exist."""
    if value is None or "://" in value:
        return value
    return str(click.Path(exists=True, dir_okay=False).convert(value, param, ctx))


def uploaded(cfg: Any, prefix: str, job_id: str, path: str) -> str:
    """Upload the local file ``path`` under ``prefix`` (``submit --upload``); its URI."""
    from pathlib import Path

    from nodes_import.pipeline import remote, s3

    try:
        uri = s3.upload_uri(prefix, job_id, Path(path))
        sent = s3.upload(Path(path), uri, cfg.imports.remote)
    except NodesImportError as exc:
        fail(str(exc))
    click.echo(f"uploaded {path} ({sent:,} bytes) to {uri}", err=True)
    if cfg.imports.remote.allowed_uris:
        try:
            remote.check_allowed_uri(uri, cfg.imports.remote.allowed_uris)
        except NodesImportError as exc:
            click.echo(f"warning: daemons with this configuration would refuse it: {exc}",
                       err=True)
    return uri


def _read_ids(path: str) -> tuple[str, ...]:
    import gzip

    opener: Any = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return tuple(line.strip() for line in handle if line.strip())


@click.command("submit")
@click.argument("source", required=False)
@click.option("--reference-ids", "ids_file", callback=_ids_file_or_uri,
              help="File of reference IDs, one per line: sent inline as referenceIds (with "
              "--upload, uploaded and sent as referenceIdsFile when too large for a message); "
              "a URI (s3://, https://) is sent as referenceIdsFile as it is.")
@click.option("--upload", metavar="s3://BUCKET/PREFIX/", help="Upload the local SOURCE (or "
              "an ID list too large for a message) to PREFIX<jobId>/<name> and send its URI.")
@click.option("--group", "group_id", required=True, help="Group the nodes belong to.")
@click.option("--domain", "domain_id", required=True, type=click.UUID, help="Domain UUID.")
@click.option("--type", "node_type", default=None, help="Node type (default USER).")
@click.option("--topic", help="Topic (default: kafka.submit-topic, nodes-import-users).")
@click.option("--job-id", type=click.UUID, help="The idempotency key (default: a new one).")
@click.option(*BOOTSTRAP_FLAGS, "bootstrap_servers", help=BOOTSTRAP_HELP)
@follow.wait_options
@click.pass_context
def submit_cmd(ctx: click.Context, source: str | None, ids_file: str | None, upload: str | None,
               group_id: str, domain_id: Any, node_type: str | None, topic: str | None,
               job_id: Any, bootstrap_servers: str | None, **wait: Any) -> None:
    """Send one job message (a file SOURCE, or --reference-ids FILE); prints its jobId.
    With --wait, follows the job until it ends (exit 0 COMPLETED, 1 FAILED).

    Gives up after kafka.startup-timeout.ms (15 s) when the broker does not answer (exit 1).
    """
    from pathlib import Path

    from nodes_import.kafka.clients import ClientErrors, tool_settings
    from nodes_import.kafka.payload import NodeExchange
    from nodes_import.kafka.producer import Publisher, submit

    if (source is None) == (ids_file is None):
        raise click.UsageError("give exactly one of SOURCE or --reference-ids FILE")
    cfg = load(ctx, **{"kafka.bootstrap-servers": bootstrap_servers})
    job_id = str(job_id or new_job_id())
    if upload and source is not None and "://" not in source:
        source = uploaded(cfg, upload, job_id, source)
    if source is not None and "://" not in source and Path(source).exists():
        source = str(Path(source).resolve())  # the daemon may run in another directory
    ids_uri = ids_file if ids_file and "://" in ids_file else None
    request = NodeExchange(
        group_id=group_id, domain_id=str(domain_id), file=source, node_type=node_type,
        reference_ids=_read_ids(ids_file) if ids_file and not ids_uri else None,
        reference_ids_file=ids_uri, job_id=job_id)
    size = len(request.to_json())
    if size > cfg.kafka.max_message_bytes and upload and ids_file and not ids_uri:
        # Too large inline: the same list as a file in the bucket (referenceIdsFile).
        request = dataclasses.replace(request, reference_ids=None, reference_ids_file=uploaded(
            cfg, upload, job_id, ids_file))
        size = len(request.to_json())
    if size > cfg.kafka.max_message_bytes:
        # The daemon would dead-letter it unread: refuse it here, where it can be fixed.
        fail(f"the job message would be {size:,} bytes ({len(request.reference_ids or ())}"
              f" reference IDs), over kafka.max-message-bytes ({cfg.kafka.max_message_bytes:,}"
              "): split the list into several jobs, or raise that limit together with the"
              " broker's and the topic's (and the daemon's), or send it as a file with"
              " --upload s3://bucket/prefix/", EXIT_USAGE)
    timeout_s = cfg.kafka.startup_timeout_ms / 1000.0
    errors = ClientErrors()
    try:
        publisher = Publisher(tool_settings(cfg.kafka, "producer", errors, timeout_s=timeout_s))
        try:
            # The message gives up at timeout_s (message.timeout.ms): the wait ends first.
            submit(publisher, topic or cfg.kafka.submit_topic, request,
                   timeout_s=timeout_s + 5)
        finally:
            publisher.close(timeout_s=1.0)
    except NodesImportError as exc:
        fail_on(exc, errors.explain(str(exc)))
    click.echo(request.job_id)
    assert request.job_id is not None  # set above
    follow.after_submit(ctx, request.job_id, **wait)


@click.group()
def dlq() -> None:
    """The dead-letter topic."""


@dlq.command("replay")
@click.option("--limit", type=click.IntRange(1), help="Replay at most N dead letters.")
@click.option("--job-id", type=click.UUID, help="Only the dead letters of this job.")
@click.option("--new-job-id", is_flag=True, help="Give each replayed message a fresh jobId "
              "(needed to re-run a job that FAILED under its own jobId).")
@click.option("--from-beginning", is_flag=True, help="Read the dead-letter topic from its "
              "start, not from where the last replay stopped.")
@click.option(*BOOTSTRAP_FLAGS, "bootstrap_servers", help=BOOTSTRAP_HELP)
@click.pass_context
def dlq_replay(ctx: click.Context, limit: int | None, job_id: Any, new_job_id: bool,
               from_beginning: bool, bootstrap_servers: str | None) -> None:
    """Re-publish dead letters to the topics they came from."""
    from nodes_import.kafka import deadletter
    from nodes_import.kafka.clients import ClientErrors, tool_settings
    from nodes_import.kafka.producer import Publisher

    cfg = load(ctx, **{"kafka.bootstrap-servers": bootstrap_servers})
    timeout_s = cfg.kafka.startup_timeout_ms / 1000.0
    errors = ClientErrors()
    topic = cfg.kafka.dlq_topic
    group = deadletter.replay_group(cfg.kafka.group_id)
    handled: set[tuple[int, int]] = set()
    try:
        settings = tool_settings(cfg.kafka, "consumer", errors, timeout_s=timeout_s)
        before = deadletter.replayed_up_to(settings, topic, group, timeout_s=timeout_s)
        letters = deadletter.read_letters(settings, topic, timeout_s=timeout_s,
                                          start=None if from_beginning else before)
        publisher = Publisher(tool_settings(cfg.kafka, "producer", errors,
                                            timeout_s=timeout_s))
        try:
            done = deadletter.replay(
                letters, publisher, limit=limit, job_id=str(job_id) if job_id else None,
                new_job_id=new_job_id, handled=handled, on_skip=lambda d, why: click.echo(
                    f"skipped {d.topic}/{d.partition}/{d.offset}: {why}", err=True))
        finally:
            publisher.close()
            # What went out is recorded even when a later letter failed to.
            deadletter.mark_replayed(settings, topic, group,
                                     deadletter.handled_up_to(letters, handled, before),
                                     timeout_s=timeout_s)
    except NodesImportError as exc:
        fail_on(exc, errors.explain(str(exc)))
    for r in done:
        fresh = f" as job {r.new_job_id}" if r.new_job_id else ""
        click.echo(f"replayed job {r.job_id or '-'} to {r.topic}/{r.partition}/{r.offset}{fresh}")
    since = "" if from_beginning or not any(before.values()) else \
        " (after those handled by earlier replays; --from-beginning for all)"
    click.echo(f"{len(done)} of {len(letters)} dead letters replayed{since}")
