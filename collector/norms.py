"""Weight and gradient norms, global norms and stable rank.

Framework-free: imports only torch. Works under ``torch.no_grad()``, computes in fp32 and returns
tensors on the parameters' device; nothing here syncs with the device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def _norms(tensors: Sequence[torch.Tensor | None], device: torch.device) -> torch.Tensor:
    """fp32 L2 norm of each tensor, NaN for ``None``, as one 1-D tensor on ``device``."""
    present = [t.detach() for t in tensors if t is not None]
    try:
        found = list(torch._foreach_norm(present, 2, dtype=torch.float32))
    except (AttributeError, RuntimeError, TypeError):  # older torch, or a layout it rejects
        found = [torch.linalg.vector_norm(t, dtype=torch.float32) for t in present]
    found.reverse()
    out = [
        torch.full((), math.nan, device=device) if t is None else found.pop().to(device)
        for t in tensors
    ]
    return torch.stack(out) if out else torch.empty(0, device=device)


@torch.no_grad()
def weight_and_grad_norms(
    params: Sequence[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frobenius norms of each parameter and of its ``.grad``, as two 1-D fp32 tensors.

    Fused with ``torch._foreach_norm`` (a loop where it is missing). A parameter without a
    gradient gets a NaN gradient norm. The results live on the first parameter's device.

    Example:
        >>> layer = torch.nn.Linear(4, 3)
        >>> weight_norms, grad_norms = weight_and_grad_norms([layer.weight, layer.bias])
        >>> grad_norms  # no backward yet
        tensor([nan, nan])
    """
    device = params[0].device if params else torch.device("cpu")
    return _norms(list(params), device), _norms([p.grad for p in params], device)


@torch.no_grad()
def global_norm(norms: torch.Tensor) -> torch.Tensor:
    """``sqrt(sum(norms²))``, the norm of all the tensors together; NaN and Inf propagate.

    Pass only real norms: a NaN standing for a missing gradient would make the result NaN.
    Computed in fp32 (fp64 input stays fp64); fp32 squares overflow to Inf beyond ~1.8e19.

    Example:
        >>> global_norm(torch.tensor([3.0, 4.0]))
        tensor(5.)
    """
    norms = norms.detach()
    return torch.linalg.vector_norm(norms if norms.dtype == torch.float64 else norms.float())


@torch.no_grad()
def stable_rank(weight_norm: torch.Tensor, sigma1: torch.Tensor) -> torch.Tensor:
    """``||W||_F² / σ1²``: between 1 (rank one) and rank(W); NaN for a zero matrix.

    Example:
        >>> stable_rank(torch.tensor(2.0), torch.tensor(1.0))
        tensor(4.)
    """
    return (weight_norm.float() / sigma1.float()) ** 2
