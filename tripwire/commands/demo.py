"""``tripwire demo``: a small GPT trains on CPU, explodes part-way, and Tripwire watches it."""

from __future__ import annotations

import math
import threading
import time

import click

from storage import Database, redact_url
from storage.db import db_argument
from tripwire.options import config_option, db_option


def _start_alerts(db: Database, config_path: str | None, stop: threading.Event):
    """The alert service in a background thread, with the rules and notifiers of ``tripwire.toml``
    (as ``tripwire scheduler`` finds it), printing each alert as it fires (if installed)."""
    try:
        from alerts.config import config_path as find_config
        from alerts.notifiers import ConsoleNotifier, Route
        from alerts.service import AlertService
    except ImportError as exc:
        click.echo(f"(alerts off: {exc}; pip install 'tripwire[alerts]')")
        return None
    from tripwire.commands.alerts import load_config_or_exit, routes_or_exit

    source = find_config(config_path)  # found once: what is loaded is what is printed
    config = load_config_or_exit(source)
    # The demo's terminal shows every alert, whatever the file routes to its log notifier (a
    # `min_severity` or `projects` there would hide the demo's run, in project "demo").
    routes = [
        Route(r.notifier) if isinstance(r.notifier, ConsoleNotifier) else r
        for r in routes_or_exit(config)
    ]
    if not any(isinstance(r.notifier, ConsoleNotifier) for r in routes):
        routes.insert(0, Route(ConsoleNotifier()))
    service = AlertService(db, config, routes)
    click.echo(
        f"Alerts: rules from {source if source else 'the built-in defaults'}; "
        f"notifiers: {', '.join(service.notifiers)}"
    )
    thread = threading.Thread(
        target=service.run_forever, args=(1.0, stop), name="tripwire-alerts", daemon=True
    )
    thread.start()
    return service, thread


def _start_dashboard(db_url: str, config_path: str | None, host: str, port: int):
    try:
        from dashboard import server
    except ImportError as exc:
        click.echo(f"(dashboard off: {exc}; pip install 'tripwire[dashboard]')")
        return None
    process = server.start(db_url, host=host, port=port, config_path=config_path)
    if server.wait_ready(port, timeout=60):
        click.echo(f"Dashboard: http://{host}:{port}")
    else:
        click.echo("(the dashboard did not start within 60 s; see `tripwire dashboard`)")
    return process


@click.command("demo")
@db_option
@config_option
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=None,
    help="Training steps (default 450; explodes near 300).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--run", "run_name", default=None, help="Run name (default demo-<time>).")
@click.option(
    "--every",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Check every N steps.",
)
@click.option("--no-dashboard", is_flag=True, help="Do not serve the dashboard (for scripts).")
@click.option("--no-alerts", is_flag=True, help="Do not run the predictors live.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Dashboard bind address.")
@click.option("--port", type=int, default=8501, show_default=True, help="Dashboard port.")
def demo_command(
    db_url, config_path, steps, seed, run_name, every, no_dashboard, no_alerts, host, port
) -> None:
    """Train a small GPT on CPU that explodes part-way, with Tripwire watching.

    Statistics stream into the database (default ./tripwire.db), the predictors run live with
    the rules and notifiers of tripwire.toml (the built-in defaults without one) and print each
    alert as it fires, and the dashboard shows the run while it trains.
    """
    import torch

    import collector
    from tripwire.demo_training import DemoConfig, explosion_step, train

    # One thread: on a busy machine a second one spin-waits and makes the demo several times slower.
    torch.set_num_threads(1)
    config = DemoConfig(seed=seed) if steps is None else DemoConfig(seed=seed, steps=steps)
    db = Database(db_url)
    db.ensure_schema()
    name = run_name or time.strftime("demo-%Y%m%d-%H%M%S")
    click.echo(f"Tripwire demo: run {name!r} -> {redact_url(db.url)}")

    dashboard = None if no_dashboard else _start_dashboard(db.url, config_path, host, port)
    stop = threading.Event()
    alerts = None if no_alerts else _start_alerts(db, config_path, stop)

    def on_step(step: int, loss: float, lr: float) -> None:
        if step % 50 == 0 or step == config.steps - 1 or not math.isfinite(loss):
            if not math.isfinite(loss) and getattr(on_step, "nonfinite_shown", False):
                return
            on_step.nonfinite_shown = not math.isfinite(loss)
            click.echo(f"step {step:>5}  loss {loss:8.4f}  lr {lr:.2e}")

    started = time.monotonic()
    monitor_box = {}

    def watch(model):
        monitor_box["m"] = collector.watch(
            model, run=name, project="demo", db=db.url, every=every, config=vars(config)
        )
        return monitor_box["m"]

    losses = train(config, watch=watch, on_step=on_step)
    monitor = monitor_box["m"]
    monitor.close()
    elapsed = time.monotonic() - started
    if alerts is not None:
        service, thread = alerts
        service.tick()  # evaluate the last rows before stopping
        stop.set()
        thread.join(10)

    exploded = explosion_step(losses)
    click.echo(
        f"\nTrained {len(losses)} steps in {elapsed:.0f} s; "
        + (
            f"the loss exploded at step {exploded}."
            if exploded is not None
            else "the loss did not explode."
        )
    )
    click.echo(
        f"Collector: {monitor.checks} checks of {len(monitor.layers)} layers, {monitor.errors} internal errors.\n"
        f"Look at it:  tripwire runs {db_argument(db.url)}\n"
        f"             tripwire export --run {name} --what layers {db_argument(db.url)}"
    )
    if dashboard is not None:
        click.echo(f"Dashboard still serving at http://{host}:{port} - press Ctrl-C to stop.")
        try:
            dashboard.wait()
        except KeyboardInterrupt:
            dashboard.terminate()
            dashboard.wait(10)


def register(cli: click.Group) -> None:
    cli.add_command(demo_command)
