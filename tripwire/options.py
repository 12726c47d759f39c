"""Options and errors shared by the command modules."""

from __future__ import annotations

import signal

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


MAX_INTERVAL_S = 86_400.0
"""The longest scheduler interval accepted (a day), on the command line and in ``[engine]``."""


class Seconds(click.ParamType):
    """A positive, finite number of seconds, at most :data:`MAX_INTERVAL_S`."""

    name = "seconds"

    def convert(self, value, param, ctx):  # noqa: ANN001, ANN201
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not 0 < seconds <= MAX_INTERVAL_S:  # NaN fails this too
            self.fail(f"{value} is not in (0, {MAX_INTERVAL_S:g}] seconds", param, ctx)
        return seconds


interval_option = click.option(
    "--interval",
    type=Seconds(),
    default=None,
    help="Seconds between scheduler ticks (default: [engine] interval_s of tripwire.toml, 10).",
)


class UserError(click.ClickException):
    """A problem the user can fix (bad argument, missing file): printed as one line, exit 1."""

    def show(self, file=None) -> None:  # noqa: ANN001
        click.echo(f"error: {self.format_message()}", err=True, file=file)


def _interrupt(_signum, _frame) -> None:  # noqa: ANN001
    raise KeyboardInterrupt


def stop_on_sigterm() -> None:
    """SIGTERM (``docker stop``, systemd) stops a long-running command like Ctrl-C does: the
    dashboard's Streamlit child goes too, the scheduler says it stopped."""
    try:
        signal.signal(signal.SIGTERM, _interrupt)
    except ValueError:  # not the main thread (e.g. invoked from a test runner's thread)
        pass
