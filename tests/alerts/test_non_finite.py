"""``non_finite`` on what real runs store: fp16 loss-scaling overflows, and weights gone
non-finite between check steps whose losses stay finite."""

from __future__ import annotations

import math

from alerts.backtest import evaluate_run
from alerts.config import parse_config
from storage import runs, stats
from tests import needs
from tests.alerts.conftest import finish_run, make_run, write_steps

torch = needs.module("torch")
collector = needs.module("collector")


def _fp16_run_with_loss_scaling(url: str, steps: int = 60) -> None:
    """A real fp16 loop with ``GradScaler``, its gradients unscaled before ``log()`` as the docs
    say; a loss scale of 2**40 makes the first steps overflow, as a too-high scale does."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)
    with collector.watch(model, run="fp16", db=url, every=5) as monitor:
        for step in range(steps):
            x, y = torch.randn(32, 16), torch.randint(0, 4, (32,))
            with torch.autocast("cpu", dtype=torch.float16):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            monitor.log(step, loss=loss)
            scaler.step(optimizer)  # skipped on the overflow steps
            scaler.update()
            optimizer.zero_grad()


def test_loss_scaling_overflows_raise_no_alert_unless_gradients_are_watched(sqlite_db):
    _fp16_run_with_loss_scaling(sqlite_db.url)
    run = runs.find_run(sqlite_db, "fp16")
    grad_norms = [p.value for p in stats.scalar_series(sqlite_db, run.id, keys=["grad_norm"])]
    assert not all(map(math.isfinite, grad_norms[:3]))  # the scaler's overflow steps, stored
    assert all(map(math.isfinite, grad_norms[-5:]))  # (grad_norm is stored on check steps)

    assert [a for a in evaluate_run(sqlite_db, run) if a.predictor == "non_finite"] == []
    watched = parse_config({"predictors": {"non_finite": {"scalar_keys": ["loss", "grad_norm"]}}})
    fired = [a for a in evaluate_run(sqlite_db, run, watched) if a.predictor == "non_finite"]
    assert fired and fired[0].step == 0


def test_weights_gone_non_finite_are_not_cleared_by_the_finite_losses_between_checks(sqlite_db):
    run_id = make_run(sqlite_db, "inf-weights", layers=["fc"], every=10)
    scalars = {step: {"loss": 2.0} for step in range(100)}  # finite on every step
    weights = {
        step: {"fc": {"weight_norm": math.inf if 30 <= step < 70 else 5.0}}
        for step in range(0, 100, 10)
    }
    write_steps(sqlite_db, run_id, scalars, weights)
    finish_run(sqlite_db, run_id)
    run = runs.get_run(sqlite_db, run_id)

    fired = [a for a in evaluate_run(sqlite_db, run) if a.predictor == "non_finite"]
    # One episode, not one per check: finite losses do not clear weights that were non-finite;
    # the finite weights measured again at step 70 do (then the engine's 3 clear evaluations).
    assert [(a.step, a.resolved_step) for a in fired] == [(30, 72)]
