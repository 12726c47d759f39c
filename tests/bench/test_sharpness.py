"""The stability ratio's power iteration against the exact eigenvalues of a small least-squares
problem, whose Hessian is known in closed form."""

from __future__ import annotations

import math

import pytest
import torch

from bench.prediction import sharpness
from bench.prediction.runs import STABLE, RunSpec, Schedule, train
from bench.prediction.sharpness import first_crossing, stability_limit, step_sizes, top_eigenvalue


def least_squares(seed: int = 0) -> tuple[torch.nn.Linear, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 5, generator=gen, dtype=torch.float64) * torch.tensor([3.0, 1, 1, 0.5, 0.1])
    y = torch.randn(64, 1, generator=gen, dtype=torch.float64)
    model = torch.nn.Linear(5, 1, bias=False).double()
    return model, x, y


def loss_of(model: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((model(x) - y) ** 2).mean()


def test_sgd_ratio_is_lr_times_the_top_hessian_eigenvalue():
    model, x, y = least_squares()
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    exact = torch.linalg.eigvalsh(x.T @ x / len(x)).max().item()
    params = list(model.parameters())
    found = top_eigenvalue(loss_of(model, x, y), params, step_sizes(opt), iterations=200)
    assert found == pytest.approx(0.3 * exact, rel=1e-6)
    assert stability_limit(opt) == pytest.approx(3.8)


def test_adam_preconditions_by_the_second_moment():
    model, x, y = least_squares(seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=0.01, eps=1e-8)
    loss_of(model, x, y).backward()
    opt.step()
    params = list(model.parameters())
    sizes = step_sizes(opt)
    d = sizes[params[0]].flatten()
    v_hat = opt.state[params[0]]["exp_avg_sq"].flatten() / (1 - 0.999)
    assert torch.allclose(d, 0.01 / (v_hat.sqrt() + 1e-8))
    hessian = x.T @ x / len(x)
    exact = torch.linalg.eigvalsh(d.sqrt()[:, None] * hessian * d.sqrt()[None, :]).max().item()
    found = top_eigenvalue(loss_of(model, x, y), params, sizes, iterations=500)
    assert found == pytest.approx(exact, rel=1e-4)


def test_a_non_finite_loss_gives_nan():
    model, x, y = least_squares()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with torch.no_grad():
        model.weight.fill_(math.inf)
    assert math.isnan(
        top_eigenvalue(loss_of(model, x, y), list(model.parameters()), step_sizes(opt))
    )


def test_first_crossing_stops_at_the_scored_step():
    ratios = [(100, 0.5), (110, 1.2), (120, 3.0)]
    assert first_crossing(ratios, until=105) is None
    assert first_crossing(ratios, until=115) == 110


def test_measuring_leaves_the_training_as_it_was(monkeypatch):
    monkeypatch.setattr(sharpness, "FROM_STEP", 0)
    monkeypatch.setattr(sharpness, "EVERY", 2)
    spec = RunSpec(
        "t", STABLE, "mlp", "x", Schedule(0.05), steps=5, optimizer="sgd", opt={"momentum": 0.9}
    )
    losses, ratios = sharpness.trace(spec)
    assert losses == train(spec)
    assert [step for step, _ in ratios] == [0, 2, 4]
    assert all(0 < ratio < 10 for _, ratio in ratios)


def test_the_ratio_judged_as_an_alert_by_the_benchmarks_definitions():
    from bench.prediction.runs import BY_NAME

    alerts = sharpness.as_alerts(
        "r", [(100, 1.5), (110, 0.5), (120, 1.2), (130, 0.9), (140, 0.8), (150, 0.7), (160, 2.0)]
    )
    assert [(a.step, a.resolved_step) for a in alerts] == [(100, 150), (160, None)]
    exploding = [2.0] * 300 + [50.0] * 40  # explodes at step 300
    divergent = BY_NAME["mlp-sgd-const"]
    warned = sharpness.judge(divergent, exploding, [(280, 0.5), (290, 1.2), (300, 0.9)])
    assert (warned.verdict, warned.lead) == ("warned", 10)
    # rang at 200 and resolved by 230: on-call saw it end, so the explosion was not warned
    late = sharpness.judge(
        divergent, exploding, [(200, 1.1), (210, 0.1), (220, 0.1), (230, 0.1), (310, 3.0)]
    )
    assert (late.verdict, late.first) == ("late", 310)
    stable = sharpness.judge(BY_NAME["mlp-sgd-const-safe"], [2.0] * 450, [(130, 1.17), (140, 0.5)])
    assert (stable.verdict, stable.first) == ("false alarm", 130)
    control = BY_NAME["gpt-lr-x10"]
    quiet = sharpness.judge(control, [2.0] * 400, [(240, 0.9), (260, 4.0)])
    assert (quiet.verdict, quiet.first_after) == ("quiet", 260)
