"""storage/alerts.py on SQLite and PostgreSQL: alerts, deliveries, silences, cursors, heartbeats."""

from __future__ import annotations

import uuid
from datetime import timedelta

from storage import alerts as store
from storage import runs
from storage.db import utcnow


def _run(db, name=None):
    with db.session() as s:
        return runs.ensure_run(
            s,
            uid=uuid.uuid4().hex,
            project="default",
            name=name or f"r-{uuid.uuid4().hex[:6]}",
            started_at=utcnow(),
        )


def _alert(predictor="non_finite", layer=None, state="firing", severity="critical", step=5):
    return {
        "predictor": predictor,
        "layer": layer,
        "fingerprint": f"x/{predictor}/{layer}",
        "severity": severity,
        "state": state,
        "score": float("nan"),
        "message": "m",
        "details": {"loss": float("inf")},
        "first_step": step,
        "fired_step": step if state != "pending" else None,
        "last_step": step,
        "resolved_step": None,
        "hold_count": 1,
        "last_notified_step": None,
    }


def test_commit_evaluation_writes_alerts_cursor_and_queue_atomically(db):
    run = _run(db)
    ids = store.commit_evaluation(
        db,
        run,
        expected_step=None,
        last_step=9,
        state={"v": 1, "ema": float("nan")},
        writes=[
            store.AlertWrite(None, _alert(), notify=[("log", "firing"), ("slack", "firing")]),
            store.AlertWrite(None, _alert("sa_collapse", "fc", "pending", "warning")),
        ],
    )
    assert len(ids) == 2 and all(ids)
    cursor = store.eval_cursors(db, [run])[run]
    assert cursor.last_step == 9 and cursor.state["v"] == 1
    (firing,) = store.firing_alerts(db, run, severity="critical")
    assert firing.details == {"loss": float("inf")}
    assert firing.score != firing.score  # NaN kept
    assert [a.state for a in store.open_alerts(db, [run])[run]] == ["firing", "pending"]
    assert {n.status for n in store.list_notifications(db)} == {"queued"}

    # A second evaluator that read the old cursor loses the race and writes nothing.
    stale = store.commit_evaluation(
        db,
        run,
        expected_step=None,
        last_step=9,
        state={},
        writes=[store.AlertWrite(None, _alert())],
    )
    assert stale is None
    stale = store.commit_evaluation(
        db, run, expected_step=3, last_step=12, state={}, writes=[store.AlertWrite(None, _alert())]
    )
    assert stale is None
    assert len(store.list_alerts(db, run_id=run)) == 2

    # Update, delete, move on.
    ok = store.commit_evaluation(
        db,
        run,
        expected_step=9,
        last_step=20,
        state={"v": 1},
        writes=[
            store.AlertWrite(ids[0], {**_alert(state="resolved"), "resolved_step": 20}),
            store.AlertWrite(ids[1], {}, delete=True),
        ],
    )
    assert ok == [ids[0], None]
    (alert,) = store.list_alerts(db, run_id=run)
    assert (alert.state, alert.resolved_step) == ("resolved", 20)
    assert store.firing_alerts(db, run) == []


def test_delivery_queue_claims_once_and_records_outcomes(db):
    run = _run(db)
    store.commit_evaluation(
        db,
        run,
        expected_step=None,
        last_step=1,
        state={},
        writes=[store.AlertWrite(None, _alert(), notify=[("log", "firing"), ("email", "firing")])],
    )
    claimed = store.claim_queued(db)
    assert len(claimed) == 2 and all(n.status == "sending" for n, _ in claimed)
    assert store.claim_queued(db) == []
    ids = [n.id for n, _ in claimed]
    store.finish_delivery(db, ids[:1], status="sent", attempts=1, error=None)
    store.finish_delivery(db, ids[1:], status="failed", attempts=4, error="smtp: 451")
    by_status = {n.status: n for n in store.list_notifications(db, alert_id=claimed[0][1].id)}
    assert by_status["sent"].attempts == 1 and by_status["failed"].error == "smtp: 451"
    assert [n.notifier for n in store.list_notifications(db, status="failed")] == ["email"]


def test_interrupted_deliveries_are_failed_not_resent(db):
    run = _run(db)
    store.commit_evaluation(
        db,
        run,
        expected_step=None,
        last_step=1,
        state={},
        writes=[store.AlertWrite(None, _alert(), notify=[("log", "firing")])],
    )
    store.claim_queued(db)  # ... and the process dies
    assert store.fail_interrupted(db, older_than=utcnow() + timedelta(seconds=1)) == 1
    (note,) = store.list_notifications(db)
    assert note.status == "failed" and "interrupted" in note.error
    assert store.claim_queued(db) == []


def test_list_alerts_filters(db):
    run, other = _run(db), _run(db)
    store.commit_evaluation(
        db,
        run,
        expected_step=None,
        last_step=1,
        state={},
        writes=[
            store.AlertWrite(None, _alert()),
            store.AlertWrite(None, _alert("sa_collapse", "fc", "firing", "warning")),
            store.AlertWrite(None, _alert("loss_spike", None, "resolved", "warning")),
        ],
    )
    store.commit_evaluation(
        db,
        other,
        expected_step=None,
        last_step=1,
        state={},
        writes=[store.AlertWrite(None, _alert())],
    )
    assert len(store.list_alerts(db)) == 4
    assert len(store.list_alerts(db, run_id=run)) == 3
    assert [
        a.predictor
        for a in store.list_alerts(db, run_id=run, severity="warning", states=["firing"])
    ] == ["sa_collapse"]
    assert [a.run_id for a in store.list_alerts(db, predictor="non_finite", limit=1)] in (
        [run],
        [other],
    )
    assert {a.predictor for a in store.firing_alerts(db, run)} == {"non_finite", "sa_collapse"}


def test_silences(db):
    run, other = _run(db), _run(db)
    now = utcnow()
    store.silence_run(db, run, until=now + timedelta(hours=1), reason="r" * 2000, created_by="me")
    store.silence_run(db, other, until=now - timedelta(seconds=1))
    forever = store.silence_run(db, other, until=None)
    assert forever.active(now + timedelta(days=365))
    assert {s.run_id for s in store.active_silences(db, now)} == {run, other}
    assert [s.run_id for s in store.active_silences(db, now + timedelta(hours=2))] == [other]
    assert len(store.active_silences(db, now, run)[0].reason) == 1000
    assert store.unsilence_run(db, other) == 2
    assert store.active_silences(db, now, other) == []


def test_runs_to_evaluate(db):
    now = utcnow()
    live, done_recent, done_old, done_behind = _run(db), _run(db), _run(db), _run(db)
    with db.session() as s:
        runs.finish(s, done_recent, status="finished", at=now - timedelta(seconds=30))
        runs.finish(s, done_old, status="finished", at=now - timedelta(days=3))
        runs.touch(s, done_behind, last_step=50, at=now)
        runs.finish(s, done_behind, status="failed", at=now - timedelta(days=3))
    store.commit_evaluation(db, done_behind, expected_step=None, last_step=10, state={}, writes=[])
    found = store.runs_to_evaluate(db, now=now, finished_grace_s=600)
    assert set(found) == {live, done_recent, done_behind}
    store.commit_evaluation(db, done_behind, expected_step=10, last_step=50, state={}, writes=[])
    assert done_behind not in store.runs_to_evaluate(db, now=now, finished_grace_s=600)


def test_runs_to_evaluate_looks_again_at_an_ended_run_whose_alerts_a_silence_held_back(db):
    now = utcnow()
    run, blown_up = _run(db), _run(db)
    for rid in (run, blown_up):
        with db.session() as s:
            runs.touch(s, rid, last_step=50, at=now)
            runs.finish(s, rid, status="failed", at=now - timedelta(days=3))
    ids = store.commit_evaluation(
        db,
        run,
        expected_step=None,
        last_step=50,
        state={},
        writes=[
            store.AlertWrite(None, _alert(step=40)),  # held back: never told
        ],
    )
    store.commit_evaluation(
        db,
        blown_up,
        expected_step=None,
        last_step=50,
        state={},
        writes=[
            store.AlertWrite(None, {**_alert(step=40), "last_notified_step": 50}),
            store.AlertWrite(None, _alert("sigma_surge", None, "firing", "warning", step=45)),
        ],
    )

    def looked_at(at=now):
        found = store.runs_to_evaluate(db, now=at, finished_grace_s=600, inhibitors=("non_finite",))
        return set(found) & {run, blown_up}

    # a warning that fired after its run blew up stays quiet for good: never looked at again
    assert looked_at() == {run}
    store.silence_run(db, run, until=now + timedelta(hours=1))
    assert looked_at() == set()
    assert looked_at(now + timedelta(hours=2)) == {run}  # the silence expired
    store.silence_run(db, run, until=None)
    assert looked_at() == set()
    store.unsilence_run(db, run)
    assert looked_at() == {run}
    cursor = store.eval_cursors(db, [run])[run]
    told = {**_alert(step=40), "last_notified_step": 50}

    def commit():  # as a scheduler that read this cursor
        return store.commit_evaluation(
            db,
            run,
            expected_step=50,
            last_step=50,
            state={},
            writes=[store.AlertWrite(ids[0], told)],
            expected_at=cursor.updated_at,
        )

    assert commit() == ids and looked_at() == set()
    assert commit() is None  # a second scheduler that read the same cursor stores nothing


def test_heartbeats_and_recorded_test_deliveries(db):
    assert store.last_beat(db, "scheduler") is None
    store.beat(db, "scheduler", {"runs": 1})
    store.beat(db, "scheduler", {"runs": 2, "tick_s": 0.5})
    seen, info = store.last_beat(db, "scheduler")
    assert info == {"runs": 2, "tick_s": 0.5} and (utcnow() - seen).total_seconds() < 60
    nid = store.record_notification(
        db, alert_id=None, notifier="slack", event="test", status="sent", attempts=2
    )
    (note,) = store.list_notifications(db)
    assert (note.id, note.event, note.alert_id, note.attempts) == (nid, "test", None, 2)


def test_reset_evaluation(db):
    run = _run(db)
    store.commit_evaluation(
        db,
        run,
        expected_step=None,
        last_step=3,
        state={},
        writes=[store.AlertWrite(None, _alert())],
    )
    store.reset_evaluation(db, run)
    assert store.list_alerts(db, run_id=run) == [] and store.eval_cursors(db, [run]) == {}


def test_runs_to_evaluate_looks_again_at_an_ended_run_with_a_live_only_alert_open(db):
    # `tripwire runs end` on a stalled run: no step is left to evaluate, but `stalled` must
    # resolve; a `stalled` alert already resolved, or the run still running, changes nothing.
    now = utcnow()
    stalled, resolved = _run(db), _run(db)
    for rid, state in ((stalled, "firing"), (resolved, "resolved")):
        with db.session() as s:
            runs.touch(s, rid, last_step=50, at=now)
        told = {**_alert("stalled", None, state, "warning", step=50), "last_notified_step": 50}
        store.commit_evaluation(
            db,
            rid,
            expected_step=None,
            last_step=50,
            state={},
            writes=[store.AlertWrite(None, told)],
        )
        with db.session() as s:
            runs.finish(s, rid, status="failed", at=now - timedelta(days=3))

    def looked_at(live_only=("stalled", "no_progress")):
        found = store.runs_to_evaluate(db, now=now, finished_grace_s=600, live_only=live_only)
        return set(found) & {stalled, resolved}

    assert looked_at() == {stalled}
    assert looked_at(live_only=()) == set()
