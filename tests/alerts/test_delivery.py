"""What the live service sends, received by a real webhook on loopback, on SQLite and PostgreSQL:
one message per step and episode, a run's messages in step order, and the alerts a silence held
back sent once when it ends, also on a run that ended meanwhile."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from alerts.config import parse_config
from alerts.notifiers import Route, WebhookNotifier
from alerts.predictors import INHIBITORS, PREDICTORS
from alerts.service import AlertService
from storage import alerts as store
from tests.alerts.conftest import exploding_series, finish_run, in_chunks, make_run, write_steps
from tests.alerts.test_notifiers_http import Recorder


@pytest.fixture
def webhook():
    """A real HTTP server on loopback that answers 200 and records what it receives."""
    server = Recorder([])
    yield server
    server.close()


def only(**predictors) -> dict:
    """A config with just these predictors on, each with these settings."""
    off = {name: {"enabled": False} for name in PREDICTORS if name not in predictors}
    return {"predictors": {**off, **predictors}}


def webhook_service(db, clock, webhook, config: dict | None = None) -> AlertService:
    notifier = WebhookNotifier(webhook.url)
    return AlertService(db, parse_config(config or {}), [Route(notifier)], clock=clock)


def received(webhook) -> list[dict]:
    return [json.loads(r["body"]) for r in webhook.requests]


def test_each_episode_is_its_own_message_in_step_order_when_a_tick_catches_up(db, clock, webhook):
    svc = webhook_service(db, clock, webhook, only(non_finite={}))
    run = make_run(db)
    nan = {385, 390, *range(395, 400)}  # fires at 385, 390, 395; resolves 3 finite steps later
    write_steps(db, run, {s: {"loss": float("nan") if s in nan else 1.0} for s in range(400)})
    finish_run(db, run)
    svc.tick()  # a scheduler catching up on the whole run at once
    sent = [(p["event"], p["step"], len(p["alert_ids"])) for p in received(webhook)]
    assert sent == [
        ("firing", 385, 1),
        ("resolved", 388, 1),
        ("firing", 390, 1),
        ("resolved", 393, 1),
        ("firing", 395, 1),
    ]


def test_one_message_covers_the_layers_that_fired_at_one_step_and_no_other(db, clock, webhook):
    growth = {
        "severity": "warning",
        "window_checks": 1,  # the growth over the last check interval
        "warmup_steps": 0,
        "for_checks": 1,
        "resolve_after": 1,
    }
    svc = webhook_service(db, clock, webhook, only(weight_growth=growth))
    run = make_run(db, layers=["l1", "l2", "l3"])

    def sigma1(layer: str, step: int) -> float:
        if layer == "l1":  # grows at every check from 100 to 290: fires at 100, resolves at 300
            return 1.2 ** ((min(max(step, 90), 290) - 90) / 10)
        jumps = {"l2": (240,), "l3": (140, 240)}[layer]  # fires at the jump, resolves a check later
        return 1.5 ** sum(step >= j for j in jumps)

    scalars = {s: {"loss": 1.0} for s in range(351)}
    layers = {
        s: {n: {"sigma1": sigma1(n, s)} for n in ("l1", "l2", "l3")} for s in range(0, 351, 10)
    }
    write_steps(db, run, scalars, layers)
    finish_run(db, run)
    svc.tick()
    sent = [(p["event"], p["step"], sorted(p["layers"])) for p in received(webhook)]
    assert sent == [
        ("firing", 100, ["l1"]),
        ("firing", 140, ["l3"]),
        ("resolved", 150, ["l3"]),
        ("firing", 240, ["l2", "l3"]),
        ("resolved", 250, ["l2", "l3"]),
        ("resolved", 300, ["l1"]),  # after the firings at 140 and 240, though its alert came first
    ]
    notes = store.list_notifications(db)
    assert len(notes) == 8 and {n.status for n in notes} == {"sent"}


@pytest.mark.parametrize("ending", ["removed", "expired"])
def test_alerts_held_back_by_a_silence_are_sent_once_it_ends_after_the_run_ended(
    db, clock, webhook, ending
):
    svc = webhook_service(db, clock, webhook)
    scalars, layers = exploding_series(steps=300, blowup=200)
    run = make_run(db, layers=["fc", "ln_out"])
    store.silence_run(db, run, until=clock.now + timedelta(hours=1), reason="known")
    for chunk_scalars, chunk_layers in in_chunks(scalars, layers, 50):  # silenced while live
        write_steps(db, run, chunk_scalars, chunk_layers)
        svc.tick()
    finish_run(db, run, status="failed")
    svc.tick()
    clock.advance(60)
    svc.tick()
    assert webhook.requests == []
    firing = store.firing_alerts(db, run)
    assert {"non_finite", "loss_exploded"} <= {a.predictor for a in firing}

    if ending == "removed":
        store.unsilence_run(db, run)
    else:
        clock.advance(3600)
    events = svc.tick()
    # what is still firing is sent now, except the weaker alerts that fired after the blow-up
    # (inhibited for good: an ended run's blow-up keeps firing)
    blown_up = min(a.fired_step for a in firing if a.predictor in INHIBITORS)
    due = {a.id for a in firing if a.severity == "critical" or a.fired_step < blown_up}
    assert len(due) < len(firing), "the synthetic explosion must raise inhibited warnings too"
    sent = received(webhook)
    assert {p["event"] for p in sent} == {"firing"}
    assert [p["step"] for p in sent] == sorted(p["step"] for p in sent)
    assert sorted(i for p in sent for i in p["alert_ids"]) == sorted(due)
    assert {e.predictor for e in events if e.notified} >= {"non_finite", "loss_exploded"}

    # a restarted scheduler sends nothing twice, and leaves the ended run alone
    restarted = webhook_service(db, clock, webhook)
    for _ in range(2):
        clock.advance(60)
        assert restarted.tick() == []
    assert len(webhook.requests) == len(sent)
    looked_at = store.runs_to_evaluate(
        db, now=clock.now, finished_grace_s=600, inhibitors=INHIBITORS
    )
    assert run not in looked_at
