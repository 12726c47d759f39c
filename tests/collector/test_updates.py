"""The update ratio's sketch against the exact relative change of a weight."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from collector.updates import sketch, update_ratio


def _exact(now: torch.Tensor, before: torch.Tensor, steps: int) -> float:
    return ((now - before).norm() / now.norm()).item() / steps


def test_a_full_rank_update_is_estimated_within_a_few_percent():
    gen = torch.Generator().manual_seed(0)
    errors = []
    for _ in range(50):
        w = torch.randn(96, 64, generator=gen)
        new = w + 1e-3 * torch.randn(96, 64, generator=gen)
        estimate = float(update_ratio(sketch(new), sketch(w), steps=1))
        errors.append(abs(estimate / _exact(new, w, 1) - 1))
    assert max(errors) < 0.1


def test_a_rank_one_update_is_unbiased_but_noisier():
    gen = torch.Generator().manual_seed(0)
    ratios = []
    for _ in range(200):
        w = torch.randn(96, 64, generator=gen)
        u, v = torch.randn(96, 1, generator=gen), torch.randn(1, 64, generator=gen)
        new = w + 1e-3 * u @ v
        ratios.append(float(update_ratio(sketch(new), sketch(w), steps=4)) / _exact(new, w, 4))
    assert statistics.median(ratios) == pytest.approx(1.0, abs=0.1)
    assert 0.4 < min(ratios) and max(ratios) < 1.8


def test_no_earlier_sketch_or_a_changed_shape_is_not_measured():
    w = torch.randn(8, 4)
    assert math.isnan(update_ratio(sketch(w), None, steps=10))
    assert math.isnan(update_ratio(sketch(w), sketch(torch.randn(6, 4)), steps=10))
    assert math.isnan(update_ratio(sketch(w), sketch(w), steps=0))


def test_bfloat16_weights_are_sketched_in_float32():
    w = torch.randn(16, 8).to(torch.bfloat16)
    assert sketch(w).dtype == torch.float32
    assert float(update_ratio(sketch(w), sketch(w), steps=1)) == 0.0
