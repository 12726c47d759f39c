"""Every ``tripwire`` command's ``--help`` shows the example commands of its docstring as
written: click rewraps a paragraph unless it follows a ``\\b`` line."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from tripwire.cli import cli


def _commands(group: click.Group, path: tuple[str, ...] = ()):
    for name, command in sorted(group.commands.items()):
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))


COMMANDS = list(_commands(cli))


def test_every_command_is_found():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"demo", "calibrate", "runs delete", "db upgrade", "spool replay"} <= names


@pytest.mark.parametrize("path,command", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_help_keeps_the_example_lines(path, command):
    examples = [
        line.strip()
        for line in (command.help or "").splitlines()
        if line.strip().startswith("tripwire ")
    ]
    shown = CliRunner().invoke(cli, [*path, "--help"], terminal_width=60)  # narrow: wrapping shows
    assert shown.exit_code == 0, shown.output
    lines = [line.strip() for line in shown.output.splitlines()]
    assert all(example in lines for example in examples), shown.output
