"""The loss-variance exploration (bench/prediction/loss_variance.py) computes what it says."""

from __future__ import annotations

import math
import random

from bench.prediction import loss_variance


def test_flicker_is_the_spread_of_the_loss_surprise_over_its_lowest_earlier_spread():
    rng = random.Random(0)
    calm = [2.0 + rng.gauss(0, 0.01) for _ in range(200)]
    loud = [2.0 + rng.gauss(0, 0.04) for _ in range(100)]  # four times the noise from step 200
    ratios = loss_variance.flicker(calm + loud)
    assert all(math.isnan(r) for r in ratios[: loss_variance.BASELINE_FROM])
    assert 0.9 < max(ratios[loss_variance.BASELINE_FROM : 200]) < 1.6
    assert 3.0 < ratios[-1] < 5.5


def test_autocorrelation_rises_when_the_loss_surprise_lingers():
    rng = random.Random(1)
    noise = [rng.gauss(0, 0.01) for _ in range(300)]
    lingering = [0.0]
    for step in range(1, 300):  # from step 150 each surprise carries 90 % of the last one over
        lingering.append((0.9 if step >= 150 else 0.0) * lingering[-1] + noise[step])
    corr = loss_variance.autocorrelation([2.0 + x for x in lingering])
    assert all(math.isnan(c) for c in corr[: loss_variance.WINDOW - 1])
    assert max(abs(c) for c in corr[loss_variance.WINDOW : 150]) < 0.5
    assert min(corr[200:]) > 0.3
    assert math.isnan(loss_variance.autocorrelation([2.0] * 40)[-1])  # flat: no correlation


def test_every_recorded_run_gets_a_peak(capsys):
    loss_variance.main()
    rows = capsys.readouterr().out.splitlines()[1:]
    assert len(rows) == len(loss_variance.SUITE)
    assert all(float(row.split()[3]) >= 1.0 for row in rows)  # a ratio to the lowest spread
    assert all(-1.0 <= float(row.split()[5]) <= 1.0 for row in rows)  # an autocorrelation
