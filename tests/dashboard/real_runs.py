"""Real short training runs streamed through the collector, for the dashboard tests.

A small MLP learns a random linear map with SGD; in the exploding runs the learning rate jumps
past the edge of stability part-way and the loss blows up to Inf and NaN. The alert engine then
evaluates the stored runs, so the alerts on the pages are real ones.
"""

from __future__ import annotations

import torch
from torch import nn

import collector
from storage import Database
from storage.alerts import beat, record_notification, silence_run
from storage.db import utcnow


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)
    )


def train(
    url: str,
    name: str,
    *,
    steps: int = 80,
    explode_at: int | None = None,
    close: bool = True,
    every: int = 5,
    seed: int = 0,
):
    """Train ``steps`` SGD steps with the collector attached; returns the monitor."""
    model = _model(seed)
    gen = torch.Generator().manual_seed(seed)
    target = torch.randn(16, 1, generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = collector.watch(
        model,
        run=name,
        project="tests",
        db=url,
        every=every,
        config={"lr": 0.05, "explode_at": explode_at},
        sample_size=64,
    )
    for step in range(steps):
        lr = 0.05 if explode_at is None or step < explode_at else 50.0 * (step - explode_at + 1)
        for group in opt.param_groups:
            group["lr"] = lr
        x = torch.randn(64, 16, generator=gen)
        loss = ((model(x) - x @ target) ** 2).mean()
        loss.backward()
        monitor.log(step, loss=loss.detach(), lr=lr)
        opt.step()
        opt.zero_grad()
    if close:
        monitor.close()
    else:
        monitor.flush()
    return monitor


def evaluate_alerts(url: str) -> None:
    """Run the real alert engine once over the database, as the scheduler would."""
    from alerts.service import AlertService

    db = Database(url)
    AlertService(db, notifiers=[]).tick()
    db.dispose()


def add_service_records(url: str, run_uid: str) -> None:
    """A failed delivery, a scheduler heartbeat and a silence, for the alerts and health pages."""
    from storage import runs

    db = Database(url)
    run = runs.find_run(db, run_uid)
    record_notification(
        db,
        alert_id=None,
        notifier="slack",
        event="test",
        status="failed",
        attempts=3,
        error="HTTP 500 from hooks.slack.com",
    )
    beat(db, "scheduler", {"runs": 1})
    from datetime import timedelta

    silence_run(db, run.id, until=utcnow() + timedelta(hours=1), reason="known", created_by="t")
    db.dispose()
