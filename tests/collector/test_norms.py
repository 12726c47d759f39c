"""Norms against torch.linalg.norm, stable rank against torch.linalg.svd."""

import math

import pytest
import torch

from collector.norms import global_norm, stable_rank, weight_and_grad_norms
from collector.spectral import power_iteration


def trained_params() -> list[torch.nn.Parameter]:
    """A small model after one real backward pass; the last layer is frozen (no grads)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4), torch.nn.Linear(4, 2)
    )
    model[3].requires_grad_(False)
    model(torch.randn(8, 16)).square().mean().backward()
    return list(model.parameters())


def test_norms_match_torch_linalg_norm():
    params = trained_params()
    weight_norms, grad_norms = weight_and_grad_norms(params)
    assert weight_norms.shape == grad_norms.shape == (len(params),)
    assert weight_norms.dtype == grad_norms.dtype == torch.float32
    for i, p in enumerate(params):
        assert weight_norms[i].item() == pytest.approx(torch.linalg.norm(p).item(), rel=1e-6)
        if p.grad is None:
            assert math.isnan(grad_norms[i].item())
        else:
            assert grad_norms[i].item() == pytest.approx(torch.linalg.norm(p.grad).item(), rel=1e-6)
    assert [math.isnan(g) for g in grad_norms.tolist()] == [p.grad is None for p in params]


def test_loop_fallback_gives_the_same_norms(monkeypatch):
    params = trained_params()
    fused = weight_and_grad_norms(params)
    monkeypatch.delattr(torch, "_foreach_norm")
    looped = weight_and_grad_norms(params)
    for a, b in zip(fused, looped, strict=True):
        torch.testing.assert_close(a, b, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_tensors_give_fp32_norms(dtype):
    gen = torch.Generator().manual_seed(1)
    t = (torch.randn(300, 7, generator=gen) * 50).to(dtype)  # fp16 squares overflow; ours must not
    weight_norms, _ = weight_and_grad_norms([t])
    assert weight_norms.dtype == torch.float32
    expected = torch.linalg.norm(t.double()).item()
    assert weight_norms[0].item() == pytest.approx(expected, rel=1e-5)


def test_non_finite_values_propagate():
    params = [torch.ones(4), torch.ones(4), torch.ones(4), torch.zeros(0)]
    params[0][1] = math.nan
    params[1][2] = -math.inf
    params[2].grad = torch.tensor([1.0, math.inf, 0.0, 0.0])
    weight_norms, grad_norms = weight_and_grad_norms(params)
    assert math.isnan(weight_norms[0].item())
    assert weight_norms[1].item() == math.inf
    assert weight_norms[2].item() == 2.0 and weight_norms[3].item() == 0.0
    assert grad_norms[2].item() == math.inf
    assert math.isnan(grad_norms[0].item())  # no grad


def test_empty_parameter_list():
    weight_norms, grad_norms = weight_and_grad_norms([])
    assert weight_norms.shape == grad_norms.shape == (0,)


def test_global_norm_is_the_norm_of_everything_together():
    params = trained_params()
    weight_norms, grad_norms = weight_and_grad_norms(params)
    everything = torch.cat([p.detach().flatten() for p in params])
    assert global_norm(weight_norms).item() == pytest.approx(
        torch.linalg.norm(everything).item(), rel=1e-6
    )
    with_grads = [p for p in params if p.grad is not None]
    grads = torch.cat([p.grad.flatten() for p in with_grads])
    present = torch.tensor([p.grad is not None for p in params])
    assert global_norm(grad_norms[present]).item() == pytest.approx(
        torch.linalg.norm(grads).item(), rel=1e-6
    )


@pytest.mark.parametrize(
    ("norms", "expected"),
    [
        ([3.0, 4.0], 5.0),
        ([1.0, math.inf], math.inf),
        ([1.0, -math.inf], math.inf),
        ([1.0, math.nan], math.nan),
        ([math.inf, math.nan], math.nan),
        ([], 0.0),
    ],
)
def test_global_norm_propagates_non_finite_values(norms, expected):
    result = global_norm(torch.tensor(norms)).item()
    assert result == expected or (math.isnan(expected) and math.isnan(result))


def test_stable_rank_matches_svd():
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(64, 24, generator=gen) @ torch.diag(torch.linspace(1, 0.1, 24))
    sigma1, _, _ = power_iteration(w)
    weight_norms, _ = weight_and_grad_norms([w])
    s = torch.linalg.svdvals(w.double())
    expected = (s.square().sum() / s[0] ** 2).item()
    assert stable_rank(weight_norms[0], sigma1).item() == pytest.approx(expected, rel=1e-4)


def test_stable_rank_limits():
    rank_one = torch.outer(torch.arange(1.0, 6.0), torch.arange(1.0, 4.0))
    identity = torch.eye(7)
    for w, expected in ((rank_one, 1.0), (identity, 7.0)):
        sigma1, _, _ = power_iteration(w)
        ratio = stable_rank(torch.linalg.norm(w), sigma1).item()
        assert ratio == pytest.approx(expected, rel=1e-5)
    zero = torch.zeros(5, 3)
    assert math.isnan(stable_rank(torch.linalg.norm(zero), power_iteration(zero)[0]).item())


def test_global_norm_of_fp64_norms_does_not_overflow():
    result = global_norm(torch.tensor([3e30, 4e30], dtype=torch.float64))
    assert result.dtype == torch.float64 and result.item() == pytest.approx(5e30)
