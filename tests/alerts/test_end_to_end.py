"""End to end: a short real training run that blows up, watched by the collector, evaluated live
by the alert service in a background thread, delivered to a real webhook server on loopback."""

from __future__ import annotations

import io
import json
import threading
from collections import Counter

import pytest

from alerts.backtest import evaluate_run
from alerts.config import parse_config
from alerts.notifiers import ConsoleNotifier, Route, WebhookNotifier
from alerts.service import AlertService
from storage import Database, runs
from storage import alerts as store
from tests import needs
from tests.alerts.test_notifiers_http import Recorder

torch = needs.module("torch")
collector = needs.module("collector")
demo = needs.module("tripwire.demo_training")


def _train(db_url: str, steps: int = 90) -> list[float]:
    cfg = demo.DemoConfig(
        steps=steps,
        n_layer=2,
        d_model=32,
        n_head=2,
        batch_size=4,
        block_size=16,
        warmup_steps=5,
        lr=3e-3,
        ramp_start=30,
        ramp_steps=20,
        peak_lr=3.0,
    )
    model, batches = demo.build(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr_at(0))
    losses = []
    with collector.watch(model, run="e2e-blowup", db=db_url, every=5) as monitor:
        for step in range(cfg.steps):
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr_at(step)
            x, y = batches()
            loss = model(x, y)
            loss.backward()
            monitor.log(step, loss=loss.detach(), lr=cfg.lr_at(step))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
    return losses


@pytest.mark.slow
def test_live_training_run_notifies_each_alert_exactly_once(tmp_path):
    torch.set_num_threads(2)
    url = f"sqlite:///{tmp_path / 'e2e.db'}"
    db = Database(url)
    db.upgrade()
    server = Recorder([])
    console = io.StringIO()
    config = parse_config({"retry": {"initial_backoff_s": 0.01}})

    def routes():
        return [
            Route(ConsoleNotifier(stream=console), "info"),
            Route(WebhookNotifier(server.url), "info"),  # loss_spike etc. ship as info
        ]

    service = AlertService(db, config, routes())
    stop = threading.Event()
    thread = threading.Thread(target=service.run_forever, args=(0.2, stop), daemon=True)
    thread.start()
    try:
        losses = _train(url)
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive()
    assert max(losses[40:]) > losses[20] + 1 or any(x != x for x in losses), "the run must blow up"

    run = runs.find_run(db, "e2e-blowup")
    alerts = [a for a in store.list_alerts(db, run_id=run.id) if a.fired_step is not None]
    assert alerts, "a blow-up must raise alerts"

    # Each alert's firing (and resolution) is queued once and delivered once per notifier.
    notes = store.list_notifications(db)
    assert {n.status for n in notes} == {"sent"}
    per_key = Counter((n.alert_id, n.notifier, n.event) for n in notes if n.event != "repeat")
    assert set(per_key.values()) == {1}
    # The blow-up itself is told; an alert not told is a weaker one that fired at or after the
    # step where the loss blew up (inhibited: a forecast of what already happened).
    told = {i for i, notifier, event in per_key if notifier == "log" and event == "firing"}
    blowups = [a for a in alerts if a.predictor in ("loss_exploded", "non_finite")]
    assert blowups and {a.id for a in blowups} <= told
    blown_up = min(a.fired_step for a in blowups)
    quiet = [a for a in alerts if a.id not in told]
    assert all(a.severity != "critical" and a.fired_step >= blown_up for a in quiet)
    # The webhook got exactly one request per (tick group) delivery, each naming the run.
    bodies = [json.loads(r["body"]) for r in server.requests]
    assert bodies and all(b["run"] == "e2e-blowup" for b in bodies)
    webhook_alerts = Counter(i for b in bodies if b["event"] == "firing" for i in b["alert_ids"])
    assert set(webhook_alerts.values()) == {1}
    assert console.getvalue().count("FIRING") >= 1

    # The live alerts are the backtest's.
    live = sorted((a.predictor, a.layer, a.fired_step) for a in alerts if a.predictor != "stalled")
    replay = sorted((a.predictor, a.layer, a.step) for a in evaluate_run(db, run, config))
    assert live == replay

    # A restarted service sends nothing more.
    before = len(server.requests)
    restarted = AlertService(db, config, routes())
    assert [e for e in restarted.tick() if e.notified] == []
    assert len(server.requests) == before and len(store.list_notifications(db)) == len(notes)
    server.close()
