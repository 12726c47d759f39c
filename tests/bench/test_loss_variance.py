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


def test_every_recorded_run_gets_a_peak(capsys):
    loss_variance.main()
    rows = capsys.readouterr().out.splitlines()[1:]
    assert len(rows) == len(loss_variance.SUITE)
    assert all(float(row.split()[3]) >= 1.0 for row in rows)  # a ratio to the lowest spread
