"""The engine through the live service on a real SQLite file: lifecycle, dedup, repeats,
inhibition, silences, restart."""

from __future__ import annotations

import io
from datetime import timedelta

from alerts.config import parse_config
from alerts.notifiers import ConsoleNotifier, Route
from alerts.service import AlertService
from storage import alerts as store
from tests.alerts.conftest import (
    exploding_series,
    finish_run,
    in_chunks,
    make_run,
    write_steps,
)


class Recorder(ConsoleNotifier):
    """A console notifier whose output we can read (a real notifier, in-process stream)."""

    def __init__(self, name: str = "log"):
        super().__init__(name, stream=io.StringIO())
        self.subjects: list[str] = []

    def send(self, message):
        self.subjects.append(message.subject)
        super().send(message)


def service(db, clock, *, config=None, notifier=None):
    config = config or parse_config({})
    notifier = notifier or Recorder()
    return AlertService(db, config, [Route(notifier)], clock=clock), notifier


ONLY_NON_FINITE = {
    "predictors": {
        name: {"enabled": False}
        for name in ("sa_collapse", "grad_norm_spike", "weight_growth", "loss_spike", "stalled")
    }
}


def nan_at(steps: int, bad: set[int]) -> dict[int, dict[str, float]]:
    return {s: {"loss": float("nan") if s in bad else 1.0} for s in range(steps)}


def test_pending_then_firing_then_resolved(sqlite_db, clock):
    cfg = parse_config(
        {
            **ONLY_NON_FINITE,
            "predictors": {
                **ONLY_NON_FINITE["predictors"],
                "non_finite": {"for_checks": 2, "resolve_after": 2},
            },
        }
    )
    svc, rec = service(sqlite_db, clock, config=cfg)
    run = make_run(sqlite_db)
    write_steps(sqlite_db, run, nan_at(4, {2}))  # steps 0..3, step 3 held back
    assert svc.tick() == []
    alerts = store.list_alerts(sqlite_db, run_id=run)
    assert [(a.state, a.first_step, a.hold_count) for a in alerts] == [("pending", 2, 1)]

    write_steps(sqlite_db, run, {s: v for s, v in nan_at(6, {3}).items() if s >= 4})  # 3 finite
    svc.tick()
    assert store.list_alerts(sqlite_db, run_id=run) == []  # pending dropped when it cleared

    write_steps(sqlite_db, run, {s: {"loss": float("nan")} for s in range(6, 9)})
    events = svc.tick()  # steps 5..7: 5 is finite, 6 and 7 are NaN
    assert [(e.kind, e.step) for e in events] == [("firing", 7)]
    (alert,) = store.firing_alerts(sqlite_db, run, severity="critical")
    assert (alert.first_step, alert.fired_step, alert.predictor) == (6, 7, "non_finite")

    write_steps(sqlite_db, run, {s: {"loss": 1.0} for s in range(9, 12)})
    events = svc.tick()  # 8 NaN, 9 and 10 finite → resolves at 10
    assert [(e.kind, e.step) for e in events] == [("resolved", 10)]
    (alert,) = store.list_alerts(sqlite_db, run_id=run)
    assert (alert.state, alert.resolved_step) == ("resolved", 10)
    assert len(rec.subjects) == 2 and "RESOLVED" in rec.subjects[1]
    kinds = sorted(n.event for n in store.list_notifications(sqlite_db))
    assert kinds == ["firing", "resolved"]


def test_an_ended_runs_firing_alerts_stay_firing_and_nothing_resolves_them(sqlite_db, clock):
    svc, rec = service(sqlite_db, clock, config=parse_config(ONLY_NON_FINITE))
    run = make_run(sqlite_db)
    write_steps(sqlite_db, run, nan_at(20, {17, 18, 19}))
    finish_run(sqlite_db, run, status="failed")
    assert [e.kind for e in svc.tick()] == ["firing"]
    for _ in range(3):  # later ticks: the run is evaluated up to its last step, then left alone
        clock.advance(3600)
        assert svc.tick() == []
    (alert,) = store.list_alerts(sqlite_db, run_id=run)
    assert (alert.state, alert.resolved_step) == ("firing", None)
    assert [n.event for n in store.list_notifications(sqlite_db)] == ["firing"]
    assert len(rec.subjects) == 1


def test_dedup_one_alert_per_fingerprint_and_repeat_interval(sqlite_db, clock):
    cfg = parse_config({**ONLY_NON_FINITE, "engine": {"repeat_every_steps": 50}})
    svc, rec = service(sqlite_db, clock, config=cfg)
    run = make_run(sqlite_db)
    for chunk in range(0, 200, 10):
        write_steps(sqlite_db, run, {s: {"loss": float("nan")} for s in range(chunk, chunk + 10)})
        svc.tick()
    alerts = store.list_alerts(sqlite_db, run_id=run)
    assert len(alerts) == 1 and alerts[0].state == "firing"
    events = [n.event for n in reversed(store.list_notifications(sqlite_db))]
    assert events[0] == "firing" and set(events[1:]) == {"repeat"}
    assert 3 <= len(events) <= 4  # every >= 50 steps over ~200 steps
    assert len(rec.subjects) == len(events)


def test_non_finite_inhibits_weaker_alerts_of_the_run(sqlite_db, clock):
    scalars, layers = exploding_series(steps=300, blowup=200)
    svc, rec = service(sqlite_db, clock)
    run = make_run(sqlite_db, layers=["fc", "ln_out"])
    write_steps(sqlite_db, run, scalars, layers)
    finish_run(sqlite_db, run)
    events = svc.tick()
    fired = {(e.predictor, e.kind): e for e in events}
    assert ("non_finite", "firing") in fired and fired["non_finite", "firing"].notified
    blowups = {"non_finite", "loss_exploded"}
    blown_up = min(e.step for e in events if e.predictor in blowups)
    weaker = [e for e in events if e.predictor not in blowups and e.kind == "firing"]
    assert weaker, "the synthetic explosion must raise warnings too"
    # All in one tick, yet counted in steps: the warnings that fired before the loss blew up
    # are told, those that fired after it are inhibited, and the blow-up itself is told.
    assert {e.notified for e in weaker if e.step < blown_up} == {True}
    assert {e.suppressed for e in weaker if e.step >= blown_up} == {"inhibited"}
    assert all(e.notified for e in events if e.predictor in blowups)
    assert len(rec.subjects) == len([e for e in events if e.notified])
    assert not any(e.layer == "ln_out" for e in events)  # one-signed layer never alerts


def test_a_loss_that_explodes_and_stays_finite_inhibits_weaker_alerts_too(sqlite_db, clock):
    scalars, layers = exploding_series(steps=400, blowup=200)
    for values in scalars.values():  # it blows up to a large loss and stays there, never NaN
        if values["loss"] != values["loss"]:
            values.update(loss=60.0, grad_norm=50.0)
    for step, by_layer in layers.items():  # and its weights stop growing from step 300 on
        if step >= 260:
            by_layer["fc"]["grad_norm"] = 50.0
        if step >= 300:
            by_layer["fc"].update(sigma1=layers[290]["fc"]["sigma1"], sa_imbalance=0.1)
    svc, rec = service(sqlite_db, clock)
    run = make_run(sqlite_db, layers=["fc", "ln_out"])
    events = []
    for chunk_scalars, chunk_layers in in_chunks(scalars, layers, 20):
        write_steps(sqlite_db, run, chunk_scalars, chunk_layers)
        events += svc.tick()
    told = {(e.predictor, e.kind): e for e in events if e.notified}
    exploded = told["loss_exploded", "firing"].step
    assert exploded in range(241, 261) and ("loss_exploded", "resolved") not in told
    # what happened before the blow-up is told, forecasts and their resolutions alike; from it
    # on, the weaker alerts are held back: new ones, and resolutions that would read as good news
    weaker = [e for e in events if e.predictor != "loss_exploded"]
    assert {e.notified for e in weaker if e.step < exploded} == {True}
    assert {e.suppressed for e in weaker if e.step >= exploded} == {"inhibited"}
    assert any(e.kind == "resolved" and e.step >= exploded for e in weaker)


def test_warnings_before_the_explosion_are_told_and_ordered(sqlite_db, clock):
    scalars, layers = exploding_series(steps=300, blowup=200)
    svc, rec = service(sqlite_db, clock)
    run = make_run(sqlite_db, layers=["fc", "ln_out"])
    for chunk_scalars, chunk_layers in in_chunks(scalars, layers, 20):
        write_steps(sqlite_db, run, chunk_scalars, chunk_layers)
        svc.tick()
    finish_run(sqlite_db, run)
    svc.tick()
    firing = [n for n in reversed(store.list_notifications(sqlite_db)) if n.event == "firing"]
    alerts = {a.id: a for a in store.list_alerts(sqlite_db, run_id=run)}
    first = alerts[firing[0].alert_id]
    nan_step = 260
    assert first.predictor in ("sa_collapse", "weight_growth") and first.fired_step < nan_step
    assert any(alerts[n.alert_id].predictor == "non_finite" for n in firing)


def test_alerts_that_fire_in_one_tick_are_told_in_the_order_they_fired(sqlite_db, clock):
    scalars, layers = exploding_series(steps=300, blowup=200)
    svc, rec = service(sqlite_db, clock)
    run = make_run(sqlite_db, layers=["fc", "ln_out"])
    write_steps(sqlite_db, run, scalars, layers)  # a scheduler catching up: all in one tick
    svc.tick()
    alerts = {a.id: a for a in store.list_alerts(sqlite_db, run_id=run)}
    told = sorted(
        (n for n in store.list_notifications(sqlite_db) if n.event == "firing"),
        key=lambda n: n.id,  # the order they were queued and sent in
    )
    steps = [alerts[n.alert_id].fired_step for n in told]
    assert len(set(steps)) > 1 and steps == sorted(steps)
    sent = [subject for subject in rec.subjects if "FIRING" in subject]
    assert all(
        alerts[n.alert_id].predictor in subject for n, subject in zip(told, sent, strict=True)
    )


def test_silence_holds_notifications_until_it_expires(sqlite_db, clock):
    svc, rec = service(sqlite_db, clock, config=parse_config(ONLY_NON_FINITE))
    run = make_run(sqlite_db)
    store.silence_run(sqlite_db, run, until=clock.now + timedelta(minutes=10), reason="known")
    write_steps(sqlite_db, run, {s: {"loss": float("nan")} for s in range(5)})
    events = svc.tick()
    assert [(e.kind, e.suppressed) for e in events] == [("firing", "silenced")]
    assert rec.subjects == [] and store.list_notifications(sqlite_db) == []
    clock.advance(11 * 60)
    write_steps(sqlite_db, run, {5: {"loss": float("nan")}})
    events = svc.tick()
    assert [(e.kind, e.notified) for e in events] == [("firing", True)]
    assert len(rec.subjects) == 1
    assert store.active_silences(sqlite_db, clock.now, run) == []


def test_an_alert_kept_quiet_is_reported_once_not_at_every_tick(sqlite_db, clock):
    # The scheduler logs every event: a silenced or inhibited alert reported again at each
    # tick (every 10 s, for as long as it stays quiet) filled its log with the same line.
    svc, rec = service(sqlite_db, clock)
    silenced = make_run(sqlite_db)
    store.silence_run(sqlite_db, silenced, until=clock.now + timedelta(minutes=1))
    write_steps(sqlite_db, silenced, {s: {"loss": float("nan")} for s in range(5)})
    wrecked = make_run(sqlite_db, layers=["fc", "ln_out"])
    scalars, layers = exploding_series(steps=300, blowup=200)
    write_steps(sqlite_db, wrecked, scalars, layers)
    first = svc.tick()
    assert ("firing", "silenced") in {(e.kind, e.suppressed) for e in first}
    assert ("firing", "inhibited") in {(e.kind, e.suppressed) for e in first}
    for _ in range(3):
        clock.advance(10)
        assert svc.tick() == []
    write_steps(sqlite_db, silenced, {5: {"loss": float("nan")}})  # new data, nothing new
    clock.advance(10)
    assert svc.tick() == []
    clock.advance(30)  # the silence ends: told now, once
    told = svc.tick()
    assert [(e.run_id, e.predictor, e.kind, e.notified) for e in told] == [
        (silenced, "non_finite", "firing", True)
    ]


def test_restart_resumes_and_sends_nothing_twice(sqlite_db, clock):
    scalars, layers = exploding_series(steps=300, blowup=200)
    run = make_run(sqlite_db, layers=["fc", "ln_out"])
    sent: list[str] = []
    for chunk_scalars, chunk_layers in in_chunks(scalars, layers, 30):
        # A fresh service (a restarted scheduler) for every chunk of data.
        svc, rec = service(sqlite_db, clock)
        write_steps(sqlite_db, run, chunk_scalars, chunk_layers)
        svc.tick()
        svc.tick()  # a second tick with no new data sends nothing
        sent += rec.subjects
    finish_run(sqlite_db, run)
    svc, rec = service(sqlite_db, clock)
    svc.tick()
    sent += rec.subjects
    notes = store.list_notifications(sqlite_db)
    assert len(sent) == len(notes) and len(notes) > 0
    keys = [(n.alert_id, n.event) for n in notes if n.event != "repeat"]
    assert len(keys) == len(set(keys))


def test_stalled_run_fires_on_wall_time_and_resolves_when_data_returns(sqlite_db, clock):
    svc, rec = service(sqlite_db, clock)
    run = make_run(sqlite_db, started_at=clock.now)
    write_steps(sqlite_db, run, {0: {"loss": 1.0}, 1: {"loss": 1.0}}, at=clock.now)
    assert svc.tick() == []
    clock.advance(400)
    events = svc.tick()
    assert [(e.predictor, e.kind) for e in events] == [("stalled", "firing")]
    write_steps(sqlite_db, run, {2: {"loss": 1.0}}, at=clock.now)
    events = svc.tick()
    assert [(e.predictor, e.kind) for e in events] == [("stalled", "resolved")]


def test_failing_notifier_is_recorded_and_does_not_stop_the_tick(sqlite_db, clock):
    class Broken(ConsoleNotifier):
        retries = True

        def send(self, message):
            raise RuntimeError("boom")

    svc, _ = service(sqlite_db, clock, config=parse_config(ONLY_NON_FINITE), notifier=Broken("x"))
    run = make_run(sqlite_db)
    write_steps(sqlite_db, run, {s: {"loss": float("nan")} for s in range(3)})
    events = svc.tick()
    assert events and events[0].notified
    (note,) = store.list_notifications(sqlite_db)
    assert (note.status, note.attempts, note.notifier) == ("failed", 1, "x")
    assert "boom" in note.error
    seen, info = store.last_beat(sqlite_db, "scheduler")
    assert info["runs"] == 1 and info["events"] == 1  # the tick went on and reported itself


def test_routing_by_severity_and_project(sqlite_db, clock):
    critical_only, everything = Recorder("pager"), Recorder("chat")
    svc = AlertService(
        sqlite_db,
        parse_config({}),
        [Route(critical_only, "critical"), Route(everything, "info", ("ml",))],
        clock=clock,
    )
    scalars, layers = exploding_series(steps=300, blowup=200)
    run = make_run(sqlite_db, "ml-run", layers=["fc", "ln_out"], project="ml")
    other = make_run(sqlite_db, "other-run", layers=["fc", "ln_out"], project="other")
    for rid in (run, other):
        write_steps(sqlite_db, rid, scalars, layers)
        finish_run(sqlite_db, rid)
    svc.tick()
    assert sorted(critical_only.subjects) == [
        "[tripwire] FIRING critical: loss_exploded on run ml/ml-run",
        "[tripwire] FIRING critical: loss_exploded on run other/other-run",
        "[tripwire] FIRING critical: non_finite on run ml/ml-run",
        "[tripwire] FIRING critical: non_finite on run other/other-run",
    ]
    assert everything.subjects and all(s.endswith("on run ml/ml-run") for s in everything.subjects)


def test_a_run_name_sends_no_escape_sequence_to_the_operators_terminal(sqlite_db, clock):
    # `docker compose logs -f scheduler`: whoever names a run must not clear the screen, retitle
    # the window, hide a link behind text (OSC 8) or reverse the line for the one reading it.
    svc, notifier = service(sqlite_db, clock, config=parse_config(ONLY_NON_FINITE))
    name = "gpt\x1b[2J\x1b]0;pwned\x07\x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\\u202e"
    run = make_run(sqlite_db, name)
    write_steps(sqlite_db, run, nan_at(3, {1}))
    assert svc.tick()
    out = notifier.stream.getvalue()
    assert "non_finite" in out and "gpt\\x1b[2J\\x1b]0;pwned\\x07" in out and "\\u202e" in out
    assert not [c for c in out if not c.isprintable() and c != "\n"], repr(out)
