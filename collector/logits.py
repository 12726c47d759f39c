"""Two logit signals the training loop measures and logs itself, on check steps.

The collector sees ``nn.Linear`` layers, not inside a fused attention kernel, and it cannot
know which layer produces the model's output, so these come from the model:

>>> import collector
>>> if monitor.is_check_step(step):                                    # doctest: +SKIP
...     extra = {"attn_logit_max": collector.attention_logit_max(q, k),
...              "log_z": collector.log_z(logits)}
>>> monitor.log(step, loss=loss, **extra)                              # doctest: +SKIP

The ``attention_logits`` and ``log_z_drift`` predictors judge them (docs/alerts.md). Both
helpers return 0-dim fp32 tensors on the input's device (no host sync) and run without grad.
"""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def attention_logit_max(
    q: torch.Tensor, k: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """Largest ``|q·k| × scale`` over all heads and query–key pairs (``scale`` 1/√d by default).

    ``q`` and ``k`` are ``(..., tokens, d)`` as passed to ``scaled_dot_product_attention``
    (after any qk-norm). Masked pairs are included: an upper bound that needs no mask. Costs
    one attention matrix, so call it on check steps only.

    >>> q = torch.tensor([[[1.0, 0.0], [0.0, 3.0]]])
    >>> round(float(attention_logit_max(q, q)), 3)   # 3·3/√2
    6.364
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q.float() @ k.float().transpose(-2, -1)
    return scores.abs().amax() * scale


@torch.no_grad()
def log_z(logits: torch.Tensor) -> torch.Tensor:
    """Mean log-partition ``logsumexp`` of the output logits over the last dimension.

    >>> round(float(log_z(torch.zeros(4, 10))), 4)   # uniform over 10 classes: log 10
    2.3026
    """
    return torch.logsumexp(logits.float(), dim=-1).mean()
