"""The command tree's help: -h everywhere, a help text on every option, true defaults."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from nodes_import.cli import main


def _commands(group: click.Group = main, path: tuple[str, ...] = ()) -> Iterator[
        tuple[tuple[str, ...], click.Command]]:
    yield path, group
    ctx = click.Context(group)
    for name in group.list_commands(ctx):  # the lazy ones too (cli.COMMANDS)
        command = group.get_command(ctx, name)
        assert command is not None, name
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


COMMANDS = dict(_commands())


def test_the_tree_holds_every_command() -> None:
    assert {" ".join(path) for path in COMMANDS} >= {
        "", "db", "db init", "import", "jobs", "jobs list", "jobs show", "jobs purge", "run",
        "demo", "submit", "dlq", "dlq replay"}


@pytest.mark.parametrize("path", list(COMMANDS), ids=lambda p: " ".join(p) or "main")
def test_every_option_of_every_command_has_a_help_text(path: tuple[str, ...]) -> None:
    bare = [param.opts[0] for param in COMMANDS[path].params
            if isinstance(param, click.Option) and not (param.help or "").strip()]
    assert bare == [], f"nodes-import {' '.join(path)}: options without help"


@pytest.mark.parametrize("path", list(COMMANDS), ids=lambda p: " ".join(p) or "main")
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_every_command_answers_h_and_help(path: tuple[str, ...], flag: str) -> None:
    result = CliRunner().invoke(main, [*path, flag], prog_name="nodes-import")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: nodes-import {' '.join(path)}".rstrip())
    assert "-h, --help" in result.output


def test_the_log_level_default_shown_is_the_one_in_force() -> None:
    text = " ".join(CliRunner().invoke(main, ["-h"]).output.split())
    assert "[default: WARNING; INFO for run]" in text
    assert "[default: WARNING]" not in text


def test_the_main_help_says_how_to_enable_shell_completion() -> None:
    text = CliRunner().invoke(main, ["-h"], prog_name="nodes-import").output
    assert 'eval "$(_NODES_IMPORT_COMPLETE=bash_source nodes-import)"' in text


@pytest.mark.parametrize("path", [("run",), ("submit",), ("dlq", "replay")])
def test_kafkas_own_spelling_of_the_bootstrap_flag_is_accepted(path: tuple[str, ...]) -> None:
    names = {opt for param in COMMANDS[path].params for opt in param.opts}
    assert {"--bootstrap-servers", "--bootstrap-server"} <= names
