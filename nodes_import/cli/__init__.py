"""The ``nodes-import`` command line: parse, load config, set up logging, call one function.

Exit codes: 0 success (job COMPLETED), 1 the job FAILED or the service could not run,
2 usage or configuration error.
"""

from __future__ import annotations

import gc
import importlib

import click

from nodes_import import logs
from nodes_import.cli.common import DEFAULT_LOG_LEVEL, RUN_LOG_LEVEL

# -h as well as --help, on every command (subcommands inherit the context settings).
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}
# The commands, each as "module:attribute", imported only when the command line names it
# (or the main help lists them all): a command loads its own family alone.
COMMANDS = {
    "db": "nodes_import.cli.imports:db",
    "import": "nodes_import.cli.imports:import_cmd",
    "jobs": "nodes_import.cli.jobs:jobs",
    "run": "nodes_import.cli.service:run_cmd",
    "demo": "nodes_import.cli.service:demo_cmd",
    "submit": "nodes_import.cli.kafka:submit_cmd",
    "dlq": "nodes_import.cli.dlq:dlq",
}
COMPLETION = """\b
Shell completion (click's), e.g. for bash in ~/.bashrc:
  eval "$(_NODES_IMPORT_COMPLETE=bash_source nodes-import)"
(zsh_source, fish_source for zsh and fish)."""


class LazyGroup(click.Group):
    """A group whose commands (``COMMANDS``) are imported when first looked up."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS and cmd_name not in self.commands:
            module, name = COMMANDS[cmd_name].split(":")
            self.add_command(getattr(importlib.import_module(module), name), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings=CONTEXT_SETTINGS, epilog=COMPLETION)
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
    # Everything imported so far lives until exit: frozen, it is out of the cyclic
    # collector's reach, so its full collections (and the one at exit) skip it. 30-40 ms
    # of CPU per command, measured; nothing frozen here is ever garbage.
    gc.freeze()

