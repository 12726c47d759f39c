"""The live scheduler and ``evaluate`` raise the same alerts on the same data."""

from __future__ import annotations

import io
import random

import pytest

from alerts.backtest import evaluate_run
from alerts.config import parse_config
from alerts.notifiers import ConsoleNotifier
from alerts.service import AlertService
from storage import alerts as store
from storage import runs
from tests.alerts.conftest import (
    exploding_series,
    finish_run,
    in_chunks,
    make_run,
    write_steps,
)


def live_alerts(db, run_id):
    return sorted(
        (a.predictor, a.layer, a.fired_step, a.resolved_step)
        for a in store.list_alerts(db, run_id=run_id)
        if a.fired_step is not None and a.predictor != "stalled"
    )


def backtest_alerts(db, run_id, **kw):
    found = evaluate_run(db, runs.get_run(db, run_id), parse_config({}), **kw)
    return sorted((a.predictor, a.layer, a.step, a.resolved_step) for a in found)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_incremental_live_ticks_equal_a_backtest(sqlite_db, clock, seed):
    rng = random.Random(seed)
    scalars, layers = exploding_series(steps=320, blowup=180)
    run_id = make_run(sqlite_db, layers=["fc", "ln_out"])
    service = AlertService(
        sqlite_db, parse_config({}), [ConsoleNotifier(stream=io.StringIO())], clock=clock
    )
    step = 0
    late_layers: dict = {}
    while step < 320:
        size = rng.choice([1, 2, 3, 7, 10, 25])
        chunk = range(step, min(320, step + size))
        # Layer rows of a check sometimes land some steps after the scalars (the batched
        # writer keeps checks in order, so only a prefix of the delayed ones is released).
        ready = {}
        for s in sorted(late_layers):
            if rng.random() < 0.4:
                break
            ready[s] = late_layers.pop(s)
        for s in chunk:
            if s in layers:
                if not late_layers and rng.random() < 0.5:
                    ready[s] = layers[s]
                else:
                    late_layers[s] = layers[s]
        write_steps(sqlite_db, run_id, {s: scalars[s] for s in chunk}, ready)
        if rng.random() < 0.7:
            service.tick()
        step = chunk.stop
    write_steps(sqlite_db, run_id, {}, late_layers)
    finish_run(sqlite_db, run_id)
    service.tick()

    live = live_alerts(sqlite_db, run_id)
    assert live, "the synthetic explosion must raise alerts"
    assert {p for p, *_ in live} >= {"non_finite", "sa_collapse", "loss_spike"}
    assert live == backtest_alerts(sqlite_db, run_id)
    assert live == backtest_alerts(sqlite_db, run_id, chunk_steps=13)


def test_backtest_writes_nothing(sqlite_db):
    scalars, layers = exploding_series(steps=300, blowup=180)
    run_id = make_run(sqlite_db, layers=["fc", "ln_out"])
    write_steps(sqlite_db, run_id, scalars, layers)
    assert backtest_alerts(sqlite_db, run_id)
    assert store.list_alerts(sqlite_db) == []
    assert store.eval_cursors(sqlite_db, [run_id]) == {}
    assert store.list_notifications(sqlite_db) == []


def test_live_equals_backtest_on_sqlite_and_postgresql(db, clock):
    """The shared ``db`` fixture: once on SQLite, once on the real PostgreSQL server."""
    scalars, layers = exploding_series(steps=300, blowup=180)
    run_id = make_run(db, layers=["fc", "ln_out"])
    out = io.StringIO()
    for chunk_scalars, chunk_layers in in_chunks(scalars, layers, 40):
        write_steps(db, run_id, chunk_scalars, chunk_layers)
        # A restarted service each time: state comes from the database only.
        AlertService(db, parse_config({}), [ConsoleNotifier(stream=out)], clock=clock).tick()
    finish_run(db, run_id)
    AlertService(db, parse_config({}), [ConsoleNotifier(stream=out)], clock=clock).tick()
    live = live_alerts(db, run_id)
    assert live and live == backtest_alerts(db, run_id)
    notes = store.list_notifications(db)
    keys = [(n.alert_id, n.event) for n in notes if n.event != "repeat"]
    assert len(keys) == len(set(keys)) and {n.status for n in notes} == {"sent"}
    # One console line per message; layers of one predictor in one tick share a message.
    lines = out.getvalue().count("\n")
    assert 0 < lines <= len(notes)
