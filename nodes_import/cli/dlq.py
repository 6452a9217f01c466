"""``dlq list`` and ``dlq show``: what is on the dead-letter topic, its error headers
decoded, read without moving any consumer offset. Added here to the ``dlq`` group of
``kafka.py`` (``cli.main`` loads the family from this module); the Kafka client is
imported inside each command, as there."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import click

from nodes_import.cli.common import BOOTSTRAP_FLAGS, JSON_HELP, dumps, fail, fail_on, load
from nodes_import.cli.kafka import BOOTSTRAP_HELP
from nodes_import.cli.kafka import dlq as dlq_group
from nodes_import.errors import NodesImportError

if TYPE_CHECKING:
    from nodes_import.kafka.letters import Letter

# Characters of an error message in `dlq list` (`dlq show` prints it whole).
MESSAGE_CHARS = 100


def _settings(ctx: click.Context, bootstrap_servers: str | None) -> tuple[Any, str, float,
                                                                         Any]:
    from nodes_import.kafka.clients import ClientErrors, tool_settings

    cfg = load(ctx, **{"kafka.bootstrap-servers": bootstrap_servers})
    timeout_s = cfg.kafka.startup_timeout_ms / 1000.0
    errors = ClientErrors()
    settings = tool_settings(cfg.kafka, "consumer", errors, timeout_s=timeout_s)
    return settings, cfg.kafka.dlq_topic, timeout_s, errors


def _line(letter: Letter) -> str:
    message = (letter.message or "").replace("\n", " ")
    if len(message) > MESSAGE_CHARS:
        message = message[:MESSAGE_CHARS] + "…"
    kind = (letter.error_class or "?").rsplit(".", 1)[-1]
    return (f"{letter.partition}/{letter.offset:<8} {letter.timestamp or '-':29} "
            f"{letter.stage or '-':12} {letter.job_id or '-':36}  {kind}: {message}")


@click.command("list")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 100_000),
              help="The most recent N dead letters.")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@click.option(*BOOTSTRAP_FLAGS, "bootstrap_servers", help=BOOTSTRAP_HELP)
@click.pass_context
def dlq_list(ctx: click.Context, limit: int, as_json: bool,
             bootstrap_servers: str | None) -> None:
    """The most recent dead letters, newest first: where, when, stage, job, error.
    Reads the topic without moving any consumer offset."""
    from nodes_import.kafka import letters

    settings, topic, timeout_s, errors = _settings(ctx, bootstrap_servers)
    try:
        found = letters.latest(settings, topic, limit=limit, timeout_s=timeout_s)
    except NodesImportError as exc:
        fail_on(exc, errors.explain(str(exc)))
    if as_json:
        click.echo(dumps([asdict(x) for x in found]))
        return
    click.echo(f"{'where':10} {'time':29} {'stage':12} {'job':36}  error")
    for letter in found:
        click.echo(_line(letter))
    click.echo(f"{len(found)} dead letters on {topic} (the most recent {limit} at most)")


def _where(text: str) -> tuple[int, int]:
    """``OFFSET`` (partition 0) or ``PARTITION/OFFSET``."""
    partition, _, offset = text.rpartition("/")
    try:
        return int(partition or 0), int(offset)
    except ValueError:
        raise click.BadParameter(f"{text!r}: give OFFSET or PARTITION/OFFSET") from None


def _show(letter: Letter) -> str:
    lines = [f"dead letter {letter.partition}/{letter.offset} ({letter.timestamp or '-'})",
             f"  stage    {letter.stage or '-'}", f"  job      {letter.job_id or '-'}",
             f"  error    {letter.error_class or '-'}: {letter.message or ''}"]
    if isinstance(letter.counts, dict):
        lines.append("  counts   " + ", ".join(f"{k} {v}" for k, v in letter.counts.items()))
    elif letter.counts is not None:
        lines.append(f"  counts   {letter.counts}")
    lines.append(f"  from     {letter.origin or '-'} (group {letter.consumer_group or '-'}, "
                 f"daemon {letter.instance or '-'})")
    lines.append(f"  key      {letter.key!r}")
    lines.append(f"  value    {letter.value or ''}")
    for name, value in letter.headers:
        lines.append(f"  header   {name}: {value}")
    if letter.stack_trace:
        lines.append("  stack trace:")
        lines += [f"    {line}" for line in letter.stack_trace.rstrip().splitlines()]
    return "\n".join(lines)


@click.command("show")
@click.argument("where", required=False)
@click.option("--job-id", type=click.UUID, help="Every dead letter of this job instead.")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@click.option(*BOOTSTRAP_FLAGS, "bootstrap_servers", help=BOOTSTRAP_HELP)
@click.pass_context
def dlq_show(ctx: click.Context, where: str | None, job_id: Any, as_json: bool,
             bootstrap_servers: str | None) -> None:
    """One dead letter whole (WHERE: OFFSET, or PARTITION/OFFSET), or every letter of
    --job-id: its error headers decoded, stack trace, original key, value and headers.
    Exit 1 when there is none."""
    from nodes_import.kafka import letters

    if (where is None) == (job_id is None):
        raise click.UsageError("give exactly one of OFFSET (or PARTITION/OFFSET) or --job-id")
    settings, topic, timeout_s, errors = _settings(ctx, bootstrap_servers)
    try:
        if job_id is not None:
            found = letters.of_job(settings, topic, str(job_id), timeout_s=timeout_s)
        else:
            partition, offset = _where(where or "")
            one = letters.at(settings, topic, partition, offset, timeout_s=timeout_s)
            found = [] if one is None else [one]
    except NodesImportError as exc:
        fail_on(exc, errors.explain(str(exc)))
    if not found:
        fail(f"no dead letter {f'of job {job_id}' if job_id else f'at {where}'} on {topic}")
    if as_json:
        click.echo(dumps([asdict(x) for x in found] if job_id else asdict(found[0])))
        return
    click.echo("\n\n".join(_show(letter) for letter in found))


# The whole family: ``dlq replay`` (kafka.py), list and show.
dlq = dlq_group
dlq.add_command(dlq_list)
dlq.add_command(dlq_show)
