"""Going back to a checkpoint: the halt → restore → resume loop that halt_on_alert is for.

A run blows up, the alert halts it, the trainer restores its checkpoint and resumes the run
(``run_id=``) from there with a fix. The steps the first attempt stored past the checkpoint are
replaced by the resumed attempt's, and the scheduler's alerts about them end. Real training,
the real scheduler service, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import copy
import io
import json
import math
import time

import pytest
import torch
from sqlalchemy import select
from torch import nn

import collector
from alerts import observations
from alerts.backtest import evaluate_run
from alerts.config import parse_config
from alerts.engine import RunEvaluator
from alerts.notifiers import ConsoleNotifier, Route
from alerts.service import AlertService
from storage import alerts as alert_store
from storage import runs, series, stats
from storage._models import SqlLayerStatBucket
from storage.writer import BatchWriter

CHECKPOINT = 20
EVERY = 1  # rollup buckets of 16 steps: the first attempt seals the checkpoint's


class Recorder(ConsoleNotifier):
    def __init__(self) -> None:
        super().__init__("log", stream=io.StringIO())
        self.messages = []

    def send(self, message):
        self.messages.append(message)
        super().send(message)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1)
    )


def _train(model, optimizer, monitor, steps, *, lr, tick, checkpoint=None) -> dict[int, float]:
    """Train on a fixed regression task; returns the logged losses. The scheduler ticks after
    every step's write (as it would every few seconds beside a real trainer)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(256, 8, generator=gen)
    y = x.sum(dim=1, keepdim=True) / 8**0.5
    losses = {}
    for step in steps:
        for group in optimizer.param_groups:
            group["lr"] = lr(step)
        batch = torch.randint(0, 256, (128,), generator=torch.Generator().manual_seed(step))
        loss = nn.functional.mse_loss(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        monitor.log(step, loss=loss)
        losses[step] = loss.item()
        optimizer.step()
        if checkpoint is not None and step == CHECKPOINT - 1:
            checkpoint.update(model=copy.deepcopy(model.state_dict()))
        monitor.flush()
        tick()
    return losses


def _same(a: dict, b: dict) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN equals NaN


def test_a_run_resumed_from_a_checkpoint_replaces_what_it_stored_past_it(db, tmp_path):
    config = parse_config({"engine": {"resolve_after": 2}})
    notifier = Recorder()
    service = AlertService(db, config, [Route(notifier)])
    options = dict(db=db.url, every=EVERY, halt_on_alert=True, spool_dir=tmp_path)

    # The first attempt: the learning rate is raised 2000-fold at step 30 (a typo in a schedule) and the loss blows up;
    # a critical alert fires and halts it.
    model, checkpoint = _model(), {}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with pytest.raises(collector.LossExplosionPredicted):
        with collector.watch(model, run="rewind", **options) as first:
            _train(
                model,
                optimizer,
                first,
                range(60),
                lr=lambda s: 0.05 if s < 30 else 100.0,
                tick=service.tick,
                checkpoint=checkpoint,
            )
    run = runs.find_run(db, first.uid)
    halted_at = run.last_step
    assert halted_at > CHECKPOINT + 10
    blowups = alert_store.firing_alerts(db, run.id)
    assert blowups and all(a.fired_step >= 30 for a in blowups)

    # The resumed attempt goes back to the checkpoint and keeps the learning rate as it was.
    model.load_state_dict(checkpoint["model"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    resumed = dict(run_id=first.uid, resume_from=CHECKPOINT)
    with collector.watch(model, run="rewind", **resumed, **options) as second:
        resumed = _train(
            model, optimizer, second, range(CHECKPOINT, 26), lr=lambda s: 0.05, tick=service.tick
        )
        # What is stored from the checkpoint on is the resumed attempt's, and nothing past it.
        run = runs.find_run(db, first.uid)
        assert run.last_step == 25 < halted_at
        loss = {p.step: p.value for p in stats.scalar_series(db, run.id, ["loss"])}
        assert sorted(loss) == list(range(26))
        with db.session() as session:  # nor in the rollup: its bucket is open again
            rolled = session.scalars(
                select(SqlLayerStatBucket.step_max).where(SqlLayerStatBucket.run_id == run.id)
            ).all()
        assert rolled and max(rolled) < CHECKPOINT
        # On to the end of the bucket the checkpoint is in and into the next one.
        resumed |= _train(
            model, optimizer, second, range(26, 40), lr=lambda s: 0.05, tick=service.tick
        )
    service.tick()

    run = runs.find_run(db, first.uid)
    assert run.last_step == 39
    loss = {p.step: p.value for p in stats.scalar_series(db, run.id, ["loss"])}
    assert sorted(loss) == list(range(40)) and all(math.isfinite(v) for v in loss.values())
    assert {s: loss[s] for s in resumed} == pytest.approx(resumed, rel=1e-6)
    checked = sorted({r.step for r in stats.layer_stats(db, run.id, with_hist=False)})
    assert checked == list(range(0, 40, EVERY))
    # The layer × step rollup was recomputed over the replaced checks (the first attempt's
    # exploded gradients at steps 31-34 would top its columns): it reads as the raw rows.
    grid = series.layer_matrices(db, run.id, ["grad_norm"], max_steps=2)["grad_norm"]
    assert grid.bucketed and grid.steps == [0, 32]
    rows = stats.layer_stats(db, run.id, with_hist=False)
    for layer, z in zip(grid.layers, grid.z, strict=True):
        for j, (lo, hi) in enumerate([(0, 32), (32, 40)]):
            raw = max(r.grad_norm for r in rows if r.layer == layer and lo <= r.step < hi)
            assert z[j] == pytest.approx(raw)

    # The alerts about the replaced steps ended, and on-call was told why.
    ended = {a.id: a for a in alert_store.list_alerts(db, run_id=run.id)}
    for blowup in blowups:
        assert ended[blowup.id].state == "resolved"
        assert ended[blowup.id].details["rewound_to"] == CHECKPOINT
    told = [m for m in notifier.messages if m.event == "resolved"]
    assert sorted(m.payload["predictor"] for m in told) == sorted(a.predictor for a in blowups)
    assert all(f"went back to step {CHECKPOINT}" in m.text for m in told)
    assert not alert_store.firing_alerts(db, run.id)

    # The predictors' memory is what evaluating the stored steps from the start gives: rebuilt
    # from the kept steps, not the abandoned attempt's and not started afresh at the checkpoint.
    (cursor,) = alert_store.eval_cursors(db, [run.id]).values()
    fresh = RunEvaluator(run.id, config.enabled_rules(), {}, [])
    for obs in observations.load(db, run.id, -1, cursor.last_step):
        fresh.feed(obs)
    assert cursor.last_step >= CHECKPOINT and "rewound_to" not in cursor.state
    assert _same(cursor.state, fresh.memory)


def test_without_resume_from_a_resumed_run_keeps_what_it_stored(db, tmp_path, caplog):
    # As W&B keeps a resumed run's history: an integration's own step counter (Accelerate's
    # tracker counts from 0 in each process) must not wipe the run.
    model = _model()
    options = dict(db=db.url, every=EVERY, spool_dir=tmp_path)
    with collector.watch(model, run="continued", **options) as first:
        for step in range(10):
            first.log(step, loss=1.0 + step)
    with collector.watch(model, run="continued", run_id=first.uid, **options) as second:
        second.record(0, eval_loss=0.5)
        for step in range(8, 14):
            second.log(step, loss=1.0)
    run = runs.find_run(db, first.uid)
    loss = [p.value for p in stats.scalar_series(db, run.id, ["loss"])]
    assert loss == [1.0 + s for s in range(10)] + [1.0] * 4
    assert "replaced" not in caplog.text


def test_resume_from_needs_the_run_to_resume(db):
    with pytest.raises(ValueError, match="needs run_id"):
        collector.watch(nn.Linear(2, 2), db=db.url, resume_from=10)


# -- the scheduler around a rewind (records written as the collector writes them) --------------


def _write(db, uid: str, records: list, tmp_path) -> None:
    writer = BatchWriter(db, uid, spool_dir=tmp_path, flush_interval=0.05)
    for kind, payload in records:
        writer.put(kind, payload)
    assert writer.flush()
    writer.close()


def _start(uid: str) -> tuple:
    run = {"uid": uid, "project": "p", "name": f"run-{uid}", "started_at": time.time(), "every": 1}
    return ("start", {"run": run, "layers": []})


def _steps(steps, **series) -> tuple:
    rows = [
        {"step": s, "key": key, "value": value(s), "wall_time": time.time()}
        for s in steps
        for key, value in series.items()
    ]
    return ("scalars", rows)


def _ended(status: str = "failed") -> tuple:
    return ("finish", {"status": status, "at": time.time(), "error": None})


def _told(notifier) -> list[tuple]:
    return [(m.event, m.payload["predictor"], m.payload["step"]) for m in notifier.messages]


@pytest.mark.parametrize("evaluated_before", [True, False])
def test_a_scheduler_tick_that_read_the_replaced_steps_stores_nothing(
    db, tmp_path, monkeypatch, evaluated_before
):
    # The resumed attempt's rewind lands while a tick evaluates the first attempt's steps.
    notifier = Recorder()
    nan_at_25 = {"loss": lambda s: math.nan if s == 25 else 1.0}
    _write(db, "race", [_start("race"), _steps(range(30), **nan_at_25), _ended()], tmp_path)
    if evaluated_before:  # up to step 9: the cursor is behind the checkpoint
        lagging = parse_config({"engine": {"max_steps_per_tick": 10}})
        AlertService(db, lagging, [Route(Recorder())]).tick()
    service = AlertService(db, parse_config({}), [Route(notifier)])
    real_load, resumed = observations.load, []

    def load_then_resume(*args):
        out = real_load(*args)
        if not resumed:
            resumed.append(True)
            fine = _steps(range(20, 23), loss=lambda s: 1.0)
            _write(db, "race", [_start("race"), ("rewind", {"from_step": 20}), fine], tmp_path)
        return out

    monkeypatch.setattr(observations, "load", load_then_resume)
    service.tick()
    monkeypatch.setattr(observations, "load", real_load)
    # The resumed attempt blows up at step 24: that must be told, and nothing about step 25.
    _write(
        db,
        "race",
        [_start("race"), _steps(range(23, 41), loss=lambda s: math.nan if s == 24 else 1.0)],
        tmp_path,
    )
    for _ in range(3):
        service.tick()
    assert [t for t in _told(notifier) if t[0] == "firing"] == [("firing", "non_finite", 24)]


def test_a_resumed_attempt_that_ends_before_its_first_step_still_ends_the_old_alerts(db, tmp_path):
    notifier = Recorder()
    service = AlertService(db, parse_config({}), [Route(notifier)])
    nan_from_25 = {"loss": lambda s: math.nan if s >= 25 else 1.0}
    _write(db, "ended", [_start("ended"), _steps(range(30), **nan_from_25), _ended()], tmp_path)
    service.tick()
    # Resumed at 20, the attempt fails at once (an out-of-memory error at its first step).
    _write(db, "ended", [_start("ended"), ("rewind", {"from_step": 20}), _ended()], tmp_path)
    service.tick()
    run = runs.find_run(db, "ended")
    assert not alert_store.firing_alerts(db, run.id)
    assert _told(notifier) == [("firing", "non_finite", 25), ("resolved", "non_finite", 29)]
    assert "rewound_to" not in alert_store.eval_cursors(db, [run.id])[run.id].state


def test_a_weaker_alert_inhibition_kept_quiet_stays_untold_when_a_resume_ends_it(db, tmp_path):
    config = parse_config({"predictors": {"attention_logits": {"min_growth": 0.0}}})
    notifier = Recorder()
    service = AlertService(db, config, [Route(notifier)])
    first = {
        "loss": lambda s: math.nan if s >= 25 else 1.0,
        "attn_logit_max": lambda s: 100.0 if s >= 26 else 10.0,
    }
    _write(db, "quiet", [_start("quiet"), _steps(range(30), **first), _ended()], tmp_path)
    service.tick()
    assert _told(notifier) == [("firing", "non_finite", 25)]
    fine = _steps(range(20, 24), loss=lambda s: 1.0, attn_logit_max=lambda s: 10.0)
    _write(db, "quiet", [_start("quiet"), ("rewind", {"from_step": 20}), fine], tmp_path)
    service.tick()
    assert _told(notifier)[1:] == [("resolved", "non_finite", 29)]


def test_after_a_resume_the_live_alerts_are_those_of_the_stored_steps(db, tmp_path):
    # A pending alert that began before the checkpoint must not keep the holds it counted on
    # the replaced steps: the live scheduler agrees with a backtest of what is stored.
    config = parse_config(
        {"predictors": {"attention_logits": {"min_growth": 0.0, "for_checks": 4}}}
    )
    notifier = Recorder()
    service = AlertService(db, config, [Route(notifier)])
    high_from_18 = {"loss": lambda s: 1.0, "attn_logit_max": lambda s: 100.0 if s >= 18 else 10.0}
    _write(db, "held", [_start("held"), _steps(range(21), **high_from_18), _ended()], tmp_path)
    service.tick()
    high_at_20 = {"loss": lambda s: 1.0, "attn_logit_max": lambda s: 100.0 if s == 20 else 10.0}
    rewind = ("rewind", {"from_step": 20})
    _write(
        db,
        "held",
        [_start("held"), rewind, _steps(range(20, 30), **high_at_20), _ended("finished")],
        tmp_path,
    )
    for _ in range(3):
        service.tick()
    run = runs.find_run(db, "held")
    assert evaluate_run(db, run, config) == []
    assert _told(notifier) == []


@pytest.mark.parametrize("steps_per_tick", [20_000, 4])  # 4: the replay takes five ticks
def test_an_alert_open_at_the_checkpoint_that_resolved_on_replaced_steps_fires_again(
    db, tmp_path, steps_per_tick
):
    engine = {"max_steps_per_tick": steps_per_tick}
    config = parse_config(
        {"predictors": {"attention_logits": {"min_growth": 0.0}}, "engine": engine}
    )
    notifier = Recorder()
    service = AlertService(db, config, [Route(notifier)])

    def ticks() -> None:
        for _ in range(40 // steps_per_tick + 2):
            service.tick()

    episode = {"loss": lambda s: 1.0, "attn_logit_max": lambda s: 100.0 if 15 <= s <= 22 else 10.0}
    _write(db, "again", [_start("again"), _steps(range(30), **episode), _ended()], tmp_path)
    ticks()
    assert _told(notifier) == [
        ("firing", "attention_logits", 15),
        ("resolved", "attention_logits", 25),
    ]
    # Back to step 20, where it was still firing; this attempt stays high to step 24.
    still_high = {"loss": lambda s: 1.0, "attn_logit_max": lambda s: 100.0 if s <= 24 else 10.0}
    rewind = ("rewind", {"from_step": 20})
    again = [_start("again"), rewind, _steps(range(20, 35), **still_high), _ended()]
    _write(db, "again", again, tmp_path)
    service.tick()
    run = runs.find_run(db, "again")
    cursor = alert_store.eval_cursors(db, [run.id])[run.id]
    assert ("replayed" in cursor.state) == (steps_per_tick < CHECKPOINT)  # replay under way
    ticks()
    # A new alert, told again: its RESOLVED at step 25 was about a replaced step.
    told = _told(notifier)[2:]
    assert told == [("firing", "attention_logits", 15), ("resolved", "attention_logits", 27)]
    backtest = [(a.predictor, a.step, a.resolved_step) for a in evaluate_run(db, run, config)]
    assert backtest == [("attention_logits", 15, 27)]


def test_a_resume_from_of_a_run_never_evaluated_does_not_back_fill_its_history(db, tmp_path):
    # The scheduler first starts three days after the run and its resume ended: old history is
    # not told, with resume_from as without (the cursor the rewind inserts counts as none).
    from datetime import timedelta

    from storage.db import utcnow

    def attempt(steps, **resume) -> str:
        options = dict(run="old", db=db.url, spool_dir=tmp_path, **resume)
        with collector.watch(nn.Linear(2, 2), **options) as m:
            for step in steps:
                m.log(step, loss=math.nan if step == 10 else 1.0)
        return m.uid

    uid = attempt(range(50))
    attempt(range(30, 36), run_id=uid, resume_from=30)
    later = lambda: utcnow() + timedelta(days=3)  # noqa: E731
    notifier = Recorder()
    service = AlertService(db, parse_config({}), [Route(notifier)], clock=later)
    assert service.tick() == [] and notifier.messages == []


def test_resume_from_in_the_same_process_goes_after_the_values_logged_before_it(db, tmp_path):
    # Caught LossExplosionPredicted, restored the checkpoint of step 30, kept the monitor.
    with collector.watch(nn.Linear(2, 2), run="inproc", db=db.url, spool_dir=tmp_path) as m:
        for step in range(50):
            m.log(step, loss=100.0)
        m.resume_from(30)
        for step in range(30, 40):
            m.log(step, loss=1.0)
    run = runs.find_run(db, "inproc")
    loss = {p.step: p.value for p in stats.scalar_series(db, run.id, ["loss"])}
    assert run.last_step == 39 and sorted(loss) == list(range(40))
    assert {loss[s] for s in range(30, 40)} == {1.0}
