"""The ``tripwire`` command line.

Each module in :mod:`tripwire.commands` adds its commands through ``register(cli)``.
Errors a user can fix are printed as one line (``error: ...``) with exit status 1.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import click

from storage import StorageError
from tripwire import commands


class _OneLineErrors(click.Group):
    """Turns the errors a user can act on into one clear line instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except StorageError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tripwire")
def cli() -> None:
    """Tripwire: early warning for loss explosions in neural-network training."""


def _register_commands() -> None:
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(cli)


_register_commands()


def main() -> None:
    cli(prog_name="tripwire")
