"""``tripwire dashboard`` (the web dashboard alone) and ``tripwire up`` (scheduler + dashboard)."""

from __future__ import annotations

import threading

import click

from tripwire.options import (
    UserError,
    config_option,
    db_option,
    interval_option,
    stop_on_sigterm,
)

HINT = "pip install 'tripwire[dashboard]'"

host_option = click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    envvar="TRIPWIRE_DASHBOARD_HOST",
    help="Address to bind (or $TRIPWIRE_DASHBOARD_HOST); 0.0.0.0 exposes the dashboard to the "
    "network.",
)
port_option = click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=8501,
    show_default=True,
    envvar="TRIPWIRE_DASHBOARD_PORT",
    help="Port to serve on (or $TRIPWIRE_DASHBOARD_PORT).",
)


def _server():
    """The server module, or a one-line error naming the missing extra."""
    try:
        import plotly  # noqa: F401
        import streamlit  # noqa: F401

        from dashboard import server
    except ImportError as exc:
        raise UserError(
            f"the dashboard needs optional packages ({exc.name} is missing): {HINT}"
        ) from None
    return server


def _database(db_url: str | None):
    from storage import Database

    db = Database(db_url)
    db.ensure_schema()
    return db


def _serve(server, db_url: str, host: str, port: int, config_path: str | None):
    from storage import redact_url

    process = server.start(db_url, host=host, port=port, config_path=config_path)
    try:  # Ctrl-C at any moment until the caller waits on it must not orphan the server
        ready = server.wait_ready(port, timeout=90, host=host, process=process)
        if not ready:
            raise UserError(f"the dashboard did not start on {host}:{port} (is the port in use?)")
        shown = "localhost" if host in ("127.0.0.1", "localhost") else host
        click.echo(f"Dashboard: http://{shown}:{port}  ({redact_url(db_url)})")
        if host not in ("127.0.0.1", "localhost", "::1"):
            click.echo(
                "Note: bound beyond localhost; "
                "set TRIPWIRE_DASHBOARD_PASSWORD to require a password."
            )
    except BaseException:
        server.stop(process)
        raise
    return process


@click.command("dashboard")
@db_option
@config_option
@host_option
@port_option
def dashboard_command(db_url: str | None, config_path: str | None, host: str, port: int) -> None:
    """Serve the web dashboard (localhost:8501 by default) until Ctrl-C.

    Set TRIPWIRE_DASHBOARD_PASSWORD to require a password. The configuration only says when a
    silent run shows as stalled (the stalled rule's after_s).
    """
    server = _server()
    if config_path:  # a file named here must load: one clear line, not a quiet default
        from tripwire.commands.alerts import load_config_or_exit

        load_config_or_exit(config_path)
    db = _database(db_url)
    stop_on_sigterm()
    process = None
    try:  # Ctrl-C or SIGTERM while it starts stops it as cleanly as later (_serve stops it)
        process = _serve(server, db.url, host, port, config_path)
        code = process.wait()
    except KeyboardInterrupt:
        if process is not None:
            server.stop(process)
        return
    if code:
        raise UserError(f"the dashboard stopped with exit status {code}")


@click.command("up")
@db_option
@config_option
@interval_option
@host_option
@port_option
def up_command(db_url: str | None, config_path: str | None, interval, host: str, port: int) -> None:  # noqa: ANN001
    """Run the alert scheduler and the dashboard together until Ctrl-C."""
    from tripwire.commands.alerts import load_config_or_exit, routes_or_exit

    server = _server()
    config = load_config_or_exit(config_path)
    routes = routes_or_exit(
        config
    )  # a notifier missing its secret is one clear line, not a traceback
    from alerts.service import AlertService

    db = _database(db_url)
    service = AlertService(db, config, routes)
    every = interval or config.engine.interval_s
    stop_on_sigterm()
    stop = threading.Event()
    thread = threading.Thread(
        target=service.run_forever, args=(every, stop), name="tripwire-scheduler", daemon=True
    )
    process = None
    try:  # a SIGTERM right after the server started must not leave it running alone
        process = _serve(server, db.url, host, port, config_path)
        thread.start()
        click.echo(f"Scheduler: every {every:g} s; notifiers: {', '.join(service.notifiers)}")
        code = process.wait()
    except KeyboardInterrupt:
        code = 0
    finally:
        stop.set()
        if process is not None:
            server.stop(process)
        if thread.is_alive():
            thread.join(timeout=30)
    if code:
        raise UserError(f"the dashboard stopped with exit status {code}")


def register(cli: click.Group) -> None:
    cli.add_command(dashboard_command)
    cli.add_command(up_command)
