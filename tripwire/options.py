"""Options and errors shared by the command modules."""

from __future__ import annotations

import click

db_option = click.option(
    "--db",
    "db_url",
    envvar="TRIPWIRE_DB_URL",
    default=None,
    metavar="URL",
    help="Database URL (default: $TRIPWIRE_DB_URL, else sqlite:///tripwire.db).",
)

config_option = click.option(
    "--config",
    "config_path",
    default=None,
    metavar="FILE",
    help="tripwire.toml to use (default: $TRIPWIRE_CONFIG, else ./tripwire.toml if present).",
)


class UserError(click.ClickException):
    """A problem the user can fix (bad argument, missing file): printed as one line, exit 1."""

    def show(self, file=None) -> None:  # noqa: ANN001
        click.echo(f"error: {self.format_message()}", err=True, file=file)
