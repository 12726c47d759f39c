"""How fast each layer's weights move: the update-to-weight ratio, from a small random sketch.

Keeping a copy of every weight between checks would double the model's memory, so each check
keeps only ``W @ R`` for a fixed Gaussian ``R`` of ``SKETCH_COLUMNS`` columns (``out × 16``
numbers per layer). Because ``E ||A r||² = ||A||_F²`` for ``r ~ N(0, I)``, the next check
estimates ``||W_now − W_before||_F / ||W_now||_F`` as ``||(W_now − W_before) R|| / ||W_now R||``
(about ±20 % when the update is nearly rank one, much tighter for the usual full-rank ones).
Divided by the steps between the two checks, that is the ``update_ratio`` statistic: the
relative change of the weights per step, the number the "updates should be ~1e-3 of the
weights" rule of thumb is about. Imports only torch.
"""

from __future__ import annotations

import functools

import torch

SKETCH_COLUMNS = 16
"""Random directions per sketch; the estimate's relative error shrinks as 1/sqrt(columns)."""

_SKETCH_SEED = 1


@functools.lru_cache(maxsize=256)
def _directions(n: int, device: torch.device) -> torch.Tensor:
    # A private generator (the training loop's RNG is not touched), the same R at every check.
    gen = torch.Generator().manual_seed(_SKETCH_SEED)
    return torch.randn(n, SKETCH_COLUMNS, generator=gen).to(device)


@torch.no_grad()
def sketch(weight: torch.Tensor) -> torch.Tensor:
    """``weight @ R`` in fp32 (``out × SKETCH_COLUMNS``), ``R`` fixed by the input width.

    >>> sketch(torch.eye(3)).shape
    torch.Size([3, 16])
    """
    return weight.float() @ _directions(weight.shape[-1], weight.device)


@torch.no_grad()
def update_ratio(now: torch.Tensor, before: torch.Tensor | None, steps: int) -> torch.Tensor:
    """Relative weight change per step between two sketches ``steps`` steps apart (0-dim).

    NaN without an earlier sketch (the first check) or when ``steps`` is not positive.

    >>> w = torch.randn(64, 32)
    >>> ratio = update_ratio(sketch(1.01 * w), sketch(w), steps=10)  # moved 1 % in 10 steps
    >>> round(float(ratio), 4)
    0.001
    """
    if before is None or steps <= 0 or before.shape != now.shape:
        return torch.full((), float("nan"), device=now.device)
    moved = torch.linalg.matrix_norm(now - before)
    return moved / torch.linalg.matrix_norm(now) / steps


@torch.no_grad()
def update_ratios(
    now: list[torch.Tensor], before: list[torch.Tensor | None], steps: list[int]
) -> torch.Tensor:
    """:func:`update_ratio` of many layers at once, as one 1-D tensor: a few fused (foreach)
    ops for all layers instead of five per layer, where every layer has an earlier sketch of
    its shape from the same number of steps ago (the usual check); else layer by layer.

    >>> w = torch.randn(64, 32)
    >>> ratios = update_ratios([sketch(1.01 * w), sketch(w)], [sketch(w), None], [10, 10])
    >>> [round(float(r), 4) for r in ratios]
    [0.001, nan]
    """
    usual = len(set(steps)) == 1 and all(
        b is not None and s > 0 and b.shape == n.shape
        for n, b, s in zip(now, before, steps, strict=True)
    )
    if not usual:
        return torch.stack(
            [update_ratio(n, b, s) for n, b, s in zip(now, before, steps, strict=True)]
        )
    moved = torch._foreach_norm(torch._foreach_sub(now, before))
    return torch.stack(moved) / torch.stack(torch._foreach_norm(now)) / steps[0]
