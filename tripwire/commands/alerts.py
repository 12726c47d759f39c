"""``tripwire scheduler``, ``tripwire evaluate``, ``tripwire notify test``, ``tripwire silence``."""

from __future__ import annotations

import logging
import re
import sys
from datetime import timedelta

import click

from storage.alerts import SEVERITIES
from storage.entities import run_label
from tripwire import jsonout
from tripwire.options import (
    UserError,
    config_option,
    db_option,
    interval_option,
    stop_on_sigterm,
)

HINT = "pip install 'tripwire[alerts]'"


def load_config_or_exit(config_path: str | None):
    """The validated configuration; import or config errors become one-line user errors."""
    try:
        from alerts.config import ConfigError, load_config
    except ImportError as exc:
        raise UserError(f"alerts need optional packages ({exc.name} is missing): {HINT}") from None
    try:
        return load_config(config_path)
    except ConfigError as exc:
        raise UserError(str(exc)) from None


def routes_or_exit(config):  # noqa: ANN001
    from alerts.config import ConfigError
    from alerts.notifiers import build_routes

    try:
        return build_routes(config)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    except ImportError as exc:
        raise UserError(f"{exc}") from None


def _database(db_url: str | None, *, create: bool = True):
    """The database, its schema checked; ``create=False`` for commands that only read it."""
    from storage import Database

    db = Database(db_url, create=create)
    db.ensure_schema()
    return db


@click.command("scheduler")
@db_option
@config_option
@interval_option
@click.option("--once", is_flag=True, help="Run one tick, print its events and exit.")
def scheduler_command(db_url: str | None, config_path: str | None, interval, once: bool) -> None:  # noqa: ANN001
    """Evaluate every live run on an interval and send notifications.

    Restarting it resumes from where it stopped: nothing is evaluated or sent twice.
    """
    config = load_config_or_exit(config_path)
    routes = routes_or_exit(config)
    from alerts.service import AlertService
    from alerts.watchdog import HeartbeatPing
    from storage import redact_url

    try:
        ping = HeartbeatPing.from_env()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    db = _database(db_url)
    service = AlertService(db, config, routes)
    if once:
        for event in service.tick():
            click.echo(_event_line(event))
        if ping is not None:
            ping.ping()
        return
    try:
        from alerts.scheduler import build_scheduler
    except ImportError as exc:
        raise UserError(str(exc)) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    every = interval or config.engine.interval_s
    names = ", ".join(repr(r.notifier) for r in routes)
    watched = f"; heartbeat: {ping!r}" if ping is not None else ""
    click.echo(
        f"tripwire scheduler: {redact_url(db.url)} every {every:g} s; notifiers: {names}{watched}"
    )
    try:
        scheduler = build_scheduler(service, interval_s=interval, ping=ping)
    except ImportError as exc:
        raise UserError(str(exc)) from None
    stop_on_sigterm()
    try:
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        click.echo("tripwire scheduler: stopped")


def _event_line(event) -> str:  # noqa: ANN001
    layer = f" {event.layer}" if event.layer else ""
    told = "" if event.notified else f" ({event.suppressed})"
    return f"{event.kind} {event.severity} {event.predictor}{layer} run={event.run_label} step={event.step}{told}"


@click.command("health")
@db_option
@config_option
@click.option(
    "--max-age",
    "max_age_s",
    type=click.FloatRange(min=1),
    default=None,
    metavar="SECONDS",
    help="How old the scheduler's last tick may be (default: 3 intervals, at least 30 s).",
)
def health_command(db_url: str | None, config_path: str | None, max_age_s: float | None) -> None:
    """Exit 0 if the alert scheduler ticked lately, else 1: a health check for Docker or
    Kubernetes, or a cron job that mails its output (a dead scheduler sends no alert at all).

    \b
      tripwire health --max-age 60 || echo "Tripwire's scheduler is down"
    """
    from alerts.watchdog import scheduler_health

    config = load_config_or_exit(config_path)
    db = _database(db_url, create=False)
    ok, line = scheduler_health(db, max_age_s or max(30.0, 3 * config.engine.interval_s))
    click.echo(line)
    if not ok:
        sys.exit(1)


@click.command("evaluate")
@db_option
@config_option
@click.option(
    "--run", "run_name", default=None, metavar="NAME", help="Only this run (name or uid)."
)
@click.option(
    "--min-severity",
    type=click.Choice(SEVERITIES),
    default="info",
    show_default=True,
    help="Leave out weaker alerts ('warning' leaves out the 'info' ones, which are not sent).",
)
@click.option("--project", default=None, help="Only runs of this project.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of alerts.")
def evaluate_command(
    db_url: str | None,
    config_path: str | None,
    run_name,
    min_severity: str,
    project: str | None,
    as_json: bool,
) -> None:  # noqa: ANN001
    """Replay stored runs through the predictors (a backtest) and list the alerts.

    Uses the same engine as the scheduler; writes nothing.
    """
    config = load_config_or_exit(config_path)
    from alerts.backtest import evaluate_run
    from alerts.config import SEVERITY_RANK
    from storage import runs

    db = _database(db_url, create=False)
    if run_name:
        targets = [runs.find_run(db, run_name, project)]
    else:
        targets = runs.list_runs(db, project=project)
    weakest = SEVERITY_RANK[min_severity]
    found = []
    for run in reversed(targets):  # oldest first
        found += [a for a in evaluate_run(db, run, config) if SEVERITY_RANK[a.severity] >= weakest]
    if as_json:
        click.echo(jsonout.dumps([a.as_dict() for a in found], indent=2))
        return
    if not found:
        click.echo(f"no alerts in {len(targets)} run(s)")
        return
    for a in found:
        layer = a.layer or "-"
        click.echo(
            f"{run_label(a.run, a.project)}\tstep {a.step}\t{a.severity}\t{a.predictor}\t{layer}\t{a.message}"
        )


@click.group("notify")
def notify_group() -> None:
    """Notifiers."""


@notify_group.command("test")
@db_option
@config_option
def notify_test_command(db_url: str | None, config_path: str | None) -> None:
    """Send a test message through every configured notifier."""
    config = load_config_or_exit(config_path)
    routes = routes_or_exit(config)
    from alerts.delivery import send_with_retry
    from alerts.message import notify_test_message
    from storage import StorageError
    from storage import alerts as store

    try:
        db = _database(db_url)
    except StorageError as exc:
        click.echo(f"warning: deliveries will not be recorded ({exc})", err=True)
        db = None
    message = notify_test_message(config.dashboard_url())
    failed = 0
    for route in routes:
        attempts, error = send_with_retry(route.notifier, message, config.retry)
        status = "sent" if error is None else "failed"
        failed += error is not None
        detail = f" after {attempts} attempt(s): {error}" if error else ""
        click.echo(f"{route.notifier!r}: {status}{detail}")
        if db is not None:
            store.record_notification(
                db,
                alert_id=None,
                notifier=route.notifier.name,
                event="test",
                status=status,
                attempts=attempts,
                error=str(error) if error else None,
            )
    if failed:
        raise UserError(f"{failed} of {len(routes)} notifier(s) failed")


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


MAX_SILENCE = timedelta(days=3650)
"""The longest ``--for`` (a silence until removed needs no duration)."""


def _duration(text: str) -> timedelta:
    found = _DURATION.match(text.strip())
    if not found:
        raise UserError(f"--for: expected a duration like 30m, 2h or 1d (got {text!r})")
    seconds = float(found.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[found.group(2)]
    if not 0 < seconds <= MAX_SILENCE.total_seconds():
        raise UserError(f"--for: give more than 0 and at most 10 years (got {text!r})")
    return timedelta(seconds=seconds)


@click.command("silence")
@db_option
@click.argument("run_name", metavar="RUN")
@click.option(
    "--for", "duration", default=None, help="How long, e.g. 30m, 2h, 1d (default: until removed)."
)
@click.option("--reason", default=None, help="Why (shown on the dashboard).")
@click.option("--remove", is_flag=True, help="Remove the run's silences instead.")
@click.option("--project", default=None, help="Look the run up in this project only.")
def silence_command(
    db_url: str | None, run_name: str, duration, reason, remove: bool, project
) -> None:  # noqa: ANN001
    """Hold back a run's notifications (alerts are still evaluated and stored)."""
    if remove and (duration or reason):
        raise UserError("--remove lifts every silence of the run: it takes no --for or --reason")
    import getpass

    from storage import alerts as store
    from storage import runs

    db = _database(db_url, create=False)
    run = runs.find_run(db, run_name, project)
    if remove:
        removed = store.unsilence_run(db, run.id)
        click.echo(f"removed {removed} silence(s) of run {run.name} (project {run.project})")
        return
    until = db.now() + _duration(duration) if duration is not None else None
    try:
        user = getpass.getuser()
    except Exception:
        user = None
    store.silence_run(db, run.id, until=until, reason=reason, created_by=user)
    when = f"until {until:%Y-%m-%d %H:%M} UTC" if until else "until removed"
    click.echo(f"silenced run {run.name} (project {run.project}) {when}")


def register(cli: click.Group) -> None:
    cli.add_command(scheduler_command)
    cli.add_command(health_command)
    cli.add_command(evaluate_command)
    cli.add_command(notify_group)
    cli.add_command(silence_command)
