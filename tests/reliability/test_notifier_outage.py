"""A webhook that answers 500, then times out, then recovers: retried with backoff, recorded, and
every run is still evaluated."""

from __future__ import annotations

from datetime import timedelta

import pytest

from alerts.config import parse_config
from alerts.notifiers import WebhookNotifier
from alerts.service import AlertService
from storage import Database, utcnow
from storage import alerts as alert_store
from tests.alerts.conftest import exploding_series, make_run, write_steps
from tests.reliability.helpers import Webhook

CONFIG = {
    "retry": {
        "max_attempts": 3,
        "initial_backoff_s": 0.05,
        "max_backoff_s": 0.08,
        "timeout_s": 0.3,
    },
    "predictors": {"stalled": {"enabled": False}},
}


def _exploding_run(db: Database, name: str) -> int:
    scalars, layers = exploding_series(steps=260, blowup=150)
    run_id = make_run(db, name, layers=["fc", "ln_out"])
    write_steps(db, run_id, scalars, layers)
    return run_id


def _notes(db: Database, run_id: int) -> list:
    alerts = {a.id for a in alert_store.list_alerts(db, run_id=run_id)}
    return [n for n in alert_store.list_notifications(db, limit=1000) if n.alert_id in alerts]


@pytest.fixture
def db(sqlite_url):
    database = Database(sqlite_url)
    database.upgrade()
    yield database
    database.dispose()


def test_outage_is_retried_recorded_and_never_stops_evaluation(db):
    hook = Webhook(statuses=[500] * 1000)
    waits: list[float] = []
    config = parse_config(CONFIG)
    notifier = WebhookNotifier(hook.url, timeout_s=config.retry.timeout_s)
    service = AlertService(db, config, [notifier], sleep=waits.append)
    try:
        down = [_exploding_run(db, f"down-{i}") for i in range(2)]
        events = service.tick()
        assert {e.run for e in events} == {"down-0", "down-1"}  # both evaluated despite the outage
        cursors = alert_store.eval_cursors(db, down)
        assert all(cursors[r].last_step >= 250 for r in down), cursors
        failed = [n for r in down for n in _notes(db, r)]
        assert failed and {(n.status, n.attempts) for n in failed} == {("failed", 3)}
        assert all("HTTP 500" in n.error and "SECRET" not in n.error for n in failed)
        messages = len({(n.alert_id, n.event) for n in failed})
        assert hook.attempts >= 3 * min(messages, 1)
        assert waits[:2] == [0.05, 0.08]  # exponential backoff, capped at max_backoff_s

        hook.statuses.clear()
        hook.delay_s = 1.0  # now it hangs past the 0.3 s timeout
        slow = _exploding_run(db, "slow")
        events = service.tick()
        assert "slow" in {e.run for e in events}, events
        timed_out = _notes(db, slow)
        assert timed_out and {(n.status, n.attempts) for n in timed_out} == {("failed", 3)}
        assert all("timed out" in n.error.lower() for n in timed_out), timed_out[0].error

        hook.delay_s = 0.0  # back
        before = len(hook.bodies)
        healthy = _exploding_run(db, "healthy")
        service.tick()
        sent = _notes(db, healthy)
        assert sent and {(n.status, n.attempts) for n in sent} == {("sent", 1)}
        assert "healthy" in {b["run"] for b in hook.bodies[before:]}
        beat = alert_store.last_beat(db, "scheduler")
        assert beat is not None and beat[1]["errors"] == 0
    finally:
        hook.close()


@pytest.mark.parametrize("driver", ["tripwire scheduler", "run_forever"])
def test_a_hanging_notifier_delays_notifications_not_evaluation(db, driver):
    # Deliveries ran inside the tick: each message to an endpoint that never answers held the
    # whole scheduler for max_attempts x timeout_s, and no run was evaluated meanwhile.
    import threading
    import time

    from alerts.scheduler import build_scheduler

    hook = Webhook(delay_s=30)  # accepts the request, answers after the sender gave up
    config = parse_config({**CONFIG, "retry": {"max_attempts": 1, "timeout_s": 8.0}})

    def later():  # the scheduler's clock: the message it holds was queued long ago
        return utcnow() + timedelta(minutes=10)

    service = AlertService(db, config, [WebhookNotifier(hook.url, timeout_s=8.0)], clock=later)
    if driver == "run_forever":  # tripwire up and tripwire demo
        stop = threading.Event()
        thread = threading.Thread(target=service.run_forever, args=(0.2, stop))
        start, finish = thread.start, lambda: (stop.set(), thread.join())
    else:
        scheduler = build_scheduler(service, interval_s=0.2, blocking=False)
        start, finish = scheduler.start, lambda: scheduler.shutdown(wait=True)
    first = _exploding_run(db, "first")
    start()
    try:
        assert hook.received.wait(20)  # the first run's message is being held
        second = _exploding_run(db, "second")
        deadline = time.monotonic() + 4.0  # half the hold: evaluated while it lasts
        while not alert_store.list_alerts(db, run_id=second) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert alert_store.list_alerts(db, run_id=second), "evaluation waited for the notifier"
        # ...and did not take the message in flight for one a killed scheduler left `sending`
        held = [n for n in _notes(db, first) if n.status != "queued"]
        assert [n.status for n in held] == ["sending"], held
    finally:
        hook.close()
        finish()  # the held delivery times out and is recorded
    assert _notes(db, first)[0].status == "failed"
