"""Weight and gradient norms, fused across layers. Imports only torch."""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def weight_and_grad_norms(params: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Frobenius norms of each parameter and of its ``.grad`` (NaN where there is no gradient).

    Fused with ``torch._foreach_norm`` per device and dtype; computed in fp32; no host sync.
    Returns two 1-D fp32 tensors on the first parameter's device.

    >>> w = torch.nn.Parameter(torch.ones(2, 2))
    >>> weights, grads = weight_and_grad_norms([w])
    >>> float(weights[0]), bool(grads[0].isnan())
    (2.0, True)
    """
    if not params:
        return torch.zeros(0), torch.zeros(0)
    device = params[0].device
    weights = _norms([p.detach() for p in params], device)
    grads = torch.full((len(params),), math.nan, device=device)
    with_grad = [i for i, p in enumerate(params) if p.grad is not None]
    if with_grad:
        grads[with_grad] = _norms([params[i].grad.detach() for i in with_grad], device)
    return weights, grads


def _norms(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    as_fp32 = [t.float() for t in tensors]
    try:
        norms = torch._foreach_norm(as_fp32)
    except (AttributeError, RuntimeError):  # older torch, or mixed devices
        norms = [torch.linalg.vector_norm(t) for t in as_fp32]
    return torch.stack([n.to(device) for n in norms])


@torch.no_grad()
def global_norm(norms: torch.Tensor) -> torch.Tensor:
    """sqrt(sum of squares) of per-layer norms; NaN and Inf propagate.

    >>> float(global_norm(torch.tensor([3.0, 4.0])))
    5.0
    """
    return torch.sqrt(torch.sum(norms.double() ** 2)).float()


@torch.no_grad()
def stable_rank(weight_norm: torch.Tensor, sigma1: torch.Tensor) -> torch.Tensor:
    """``||W||_F² / σ1²`` (between 1 and the rank); NaN for a zero matrix.

    >>> float(stable_rank(torch.tensor(2.0), torch.tensor(1.0)))
    4.0
    """
    return (weight_norm.float() / sigma1.float()) ** 2
