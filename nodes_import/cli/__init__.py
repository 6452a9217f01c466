"""The ``nodes-import`` command line: parse, load config, set up logging, call one function.

Exit codes: 0 success (job COMPLETED), 1 the job FAILED or the service could not run,
2 usage or configuration error.
"""

from __future__ import annotations

import gc

import click

from nodes_import import logs
from nodes_import.cli import dlq, imports, jobs, kafka, service
from nodes_import.cli.common import DEFAULT_LOG_LEVEL, RUN_LOG_LEVEL
from nodes_import.pipeline import memory

# -h as well as --help, on every command (subcommands inherit the context settings).
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}
COMPLETION = """\b
Shell completion (click's), e.g. for bash in ~/.bashrc:
  eval "$(_NODES_IMPORT_COMPLETE=bash_source nodes-import)"
(zsh_source, fish_source for zsh and fish)."""


@click.group(context_settings=CONTEXT_SETTINGS, epilog=COMPLETION)
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="YAML config file (default: $NODES_IMPORT_CONFIG).")
@click.option("--log-level", default=None,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              # The default in force, which differs by command: shown as text.
              help="Level of the JSON log lines on stderr.  [default: "
                   f"{DEFAULT_LOG_LEVEL}; {RUN_LOG_LEVEL} for run]")
@click.version_option(package_name="nodes-import")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, log_level: str | None) -> None:
    """Import user nodes into PostgreSQL through COPY."""
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path
    logs.setup(log_level or DEFAULT_LOG_LEVEL)
    memory.use_jemalloc()
    # Everything imported so far lives until exit: frozen, it is out of the cyclic
    # collector's reach, so its full collections (and the one at exit) skip it. 30-40 ms
    # of CPU per command, measured; nothing frozen here is ever garbage.
    gc.freeze()


# The command families, one module each.

for _command in (imports.db, imports.import_cmd, jobs.jobs, service.run_cmd,
                 service.demo_cmd, kafka.submit_cmd, kafka.dlq):
    main.add_command(_command)
for _command in (dlq.dlq_list, dlq.dlq_show):
    kafka.dlq.add_command(_command)
