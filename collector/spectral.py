"""Spectral statistics of one linear layer: σ1 and v1 by power iteration, and spectral alignment.

Framework-free: imports only torch. Every function works under ``torch.no_grad()``, accepts CPU or
CUDA tensors in fp32/bf16/fp16, computes in fp32 and returns tensors on the input's device, so the
caller can gather a whole check's statistics with one host transfer. Nothing here syncs with the
device except where marked "sync point" (inputs on mixed devices).
"""

from __future__ import annotations

import functools
import math

import torch

COLD_ITERS = 50
"""Power iterations without a previous ``v``."""

WARM_ITERS = 8
"""Power iterations warm-started from the previous check's ``v``. On a GPT training on text
(``python -m bench.check_cost``) 8 put v1 within 0.06 rad of the SVD's at the 95th percentile
(4: 0.4–0.6 rad; 16: 0.007 rad, at twice the cost, which broke the 2 % overhead bar)."""

SA_BINS = torch.arange(-20, 21, dtype=torch.float32) / 20
"""Default SA histogram bin edges: 40 equal bins on [-1, 1], each 0.05 wide; 0 is an exact edge
(``linspace`` would put it at -1.5e-8), so bins 0-19 hold negative SA and 20-39 the rest."""

SA_COLUMNS = (
    "sa_pos",
    "sa_imbalance",
    "sa_mean",
    "sa_abs_mean",
    "act_max",
    "act_norm_mean",
    "sa_c_abs_mean",
    "sa_c_imbalance",
)
"""The scalar statistics :func:`sa_statistics` returns besides the histogram, in table order."""

CENTRED_TOL = 64 * torch.finfo(torch.float32).eps
"""Rows whose squared centred norms are all at most this fraction of their squared norms count
as all equal: they have no centred SA (:func:`centred_norms`). 64 ε is ~9x the rounding the
expansion was seen to leave where rows are equal. Judged per sample, not per row: a row close to
the mean among rows that vary keeps its centred SA (its sign is what ``sa_c_imbalance`` counts,
and rounding in its norm averages out of ``sa_c_abs_mean``)."""

_COLD_SEED = 0
_SA_BINS_ON: dict[torch.device, torch.Tensor] = {}


def _normalize(x: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """``x / ||x||``, or ``fallback`` where ``x`` is exactly zero; NaN stays NaN."""
    norm = torch.linalg.vector_norm(x)
    return torch.where(norm == 0, fallback, x / norm)


def _edges_on(edges: torch.Tensor, device: torch.device) -> torch.Tensor:
    if edges.device == device:
        return edges.float()
    if edges is SA_BINS:
        if device not in _SA_BINS_ON:
            _SA_BINS_ON[device] = SA_BINS.to(device)  # sync point, once per device
        return _SA_BINS_ON[device]
    # sync point: a blocking host-to-device copy; pass custom edges on the rows' device instead.
    return edges.to(device, torch.float32)


@functools.lru_cache(maxsize=256)
def _cold_start(n: int, device: torch.device) -> torch.Tensor:
    """The unit start vector of width ``n`` on ``device`` (shared: do not modify it)."""
    # A private generator: the collector must not consume the training loop's global RNG.
    # Drawn on the CPU on every device: a CUDA generator draws other numbers from the same seed,
    # and where σ1 barely stands apart (a freshly initialised layer) 50 iterations from another
    # start end elsewhere: σ1 differed by 2.5 % from the CPU's on an H200 (bench.device_parity).
    gen = torch.Generator().manual_seed(_COLD_SEED)
    v = torch.randn(n, generator=gen)
    return (v / torch.linalg.vector_norm(v)).to(device)  # sync point, once per width and device


@torch.no_grad()
def power_iteration(
    weight: torch.Tensor, v: torch.Tensor | None = None, iters: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top singular value and vectors of ``weight`` (out × in) by power iteration on WᵀW.

    Warm-start with the ``v`` returned at the previous check: the weight moves little between
    checks, so ``WARM_ITERS`` iterations suffice (``COLD_ITERS`` without ``v``). A warm-started
    ``v1`` keeps the sign of ``v``: WᵀW is positive semi-definite, so ``<v1, v> > 0``. A ``v``
    that is zero or non-finite is replaced by the cold start vector (for ``iters`` or
    ``WARM_ITERS`` iterations, so that one check is less accurate). Weights with more than two
    dimensions are flattened to ``(shape[0], -1)``.

    Returns ``(sigma1, v1, u1)``: a 0-dim fp32 tensor and unit vectors of length ``in`` and
    ``out`` with ``W v1 = sigma1 u1``. A zero matrix has no singular vectors: it gives
    ``sigma1 = 0`` and ``v1 = u1 = 0`` (the SA statistics and v drift against such a ``v1`` are
    NaN, and a warm start from it is a cold one); a NaN weight gives ``sigma1 = NaN``, an
    infinite one ``sigma1 = Inf`` (its vectors are then NaN).

    Example:
        >>> w = torch.diag(torch.tensor([3.0, 1.0]))
        >>> sigma1, v1, u1 = power_iteration(w)
        >>> round(float(sigma1), 4)
        3.0
        >>> sigma1, v1, u1 = power_iteration(w + 0.01, v=v1)  # next check, warm
    """
    w = weight.detach().float()
    w = w.reshape(w.shape[0], -1) if w.dim() != 2 else w
    n_in = w.shape[1]
    cold = _cold_start(n_in, w.device)
    if v is None:
        n_iters = COLD_ITERS if iters is None else iters
        v = cold
    else:
        n_iters = WARM_ITERS if iters is None else iters
        v = v.detach().to(w.device, torch.float32)
        norm = torch.linalg.vector_norm(v)
        v = torch.where(torch.isfinite(norm) & (norm > 0), v / norm, cold)
    no_u = torch.zeros(w.shape[0], device=w.device)
    for _ in range(n_iters):
        # Alternating u/v steps: the same iterates as WᵀW, without squaring σ (overflow in fp32).
        u = _normalize(w @ v, no_u)
        v = _normalize(w.T @ u, v)
    wv = w @ v
    sigma1 = torch.linalg.vector_norm(wv)
    u = torch.where(sigma1 == 0, torch.zeros_like(wv), wv / sigma1)
    v = torch.where(sigma1 == 0, 0.0, v)  # not the start vector the iterations kept
    # A NaN anywhere makes σ1 NaN and an Inf makes it Inf (σ1 ≥ max |w_ij|); the iterates alone
    # would turn an Inf into NaN through Inf - Inf.
    amax = w.abs().amax() if w.numel() else torch.zeros((), device=w.device)
    sigma1 = torch.where(torch.isfinite(amax), sigma1, amax)
    return sigma1, v, u


@torch.no_grad()
def align_sign(v_new: torch.Tensor, v_prev: torch.Tensor | None) -> torch.Tensor:
    """``v_new`` or ``-v_new``, whichever has ``<v_new, v_prev> >= 0``.

    Singular vectors are defined up to sign; flipping keeps the SA sign continuous between checks.
    With no ``v_prev`` (or a NaN one) ``v_new`` is returned unchanged.

    Example:
        >>> align_sign(torch.tensor([-0.6, -0.8]), torch.tensor([1.0, 0.0]))
        tensor([0.6000, 0.8000])
    """
    if v_prev is None:
        return v_new
    dot = torch.dot(v_new.float(), v_prev.to(v_new.device, torch.float32))
    return torch.where(dot < 0, -v_new, v_new)


@torch.no_grad()
def v_drift(v_new: torch.Tensor, v_prev: torch.Tensor | None) -> torch.Tensor:
    """Angle in radians, in [0, π/2], between the lines of ``v_new`` and ``v_prev`` (sign-blind).

    0 means v1 has not moved since the last check, π/2 that it turned orthogonal. Computed as
    ``2·atan2(||a - b||, ||a + b||)`` on unit vectors, accurate for small angles where
    ``arccos`` of a cosine near 1 is not. NaN when there is no previous vector.

    Example:
        >>> round(float(v_drift(torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0]))), 4)
        0.7854
    """
    if v_prev is None:
        return torch.full((), math.nan, device=v_new.device)
    a = v_new.float()
    b = v_prev.to(a.device, torch.float32)
    a = a / torch.linalg.vector_norm(a)
    b = b / torch.linalg.vector_norm(b)
    b = torch.where(torch.dot(a, b) < 0, -b, b)
    return 2 * torch.atan2(torch.linalg.vector_norm(a - b), torch.linalg.vector_norm(a + b))


@torch.no_grad()
def sample_rows(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """``k`` rows of ``x`` (shape ``(..., in)``) drawn uniformly without replacement.

    All leading dimensions (batch, sequence, ...) are pooled, so every token row is equally likely.
    Returns all rows, in order, when there are at most ``k``. Deterministic given ``generator``;
    keep the generator on ``x``'s device to avoid a host-to-device copy of the indices.

    Example:
        >>> gen = torch.Generator().manual_seed(0)
        >>> sample_rows(torch.randn(8, 128, 64), 1024, gen).shape
        torch.Size([1024, 64])
    """
    rows = x.detach().reshape(math.prod(x.shape[:-1]), x.shape[-1])
    n = rows.shape[0]
    if n <= k:
        return rows
    idx = torch.randperm(n, generator=generator, device=generator.device)[: max(k, 0)]
    return rows[idx.to(rows.device)]  # sync point only with a CPU generator for CUDA rows


@torch.no_grad()
def sa_statistics(
    rows: torch.Tensor, v1: torch.Tensor, bin_edges: torch.Tensor = SA_BINS
) -> dict[str, torch.Tensor]:
    """Spectral-alignment statistics of input rows against the top right singular vector ``v1``.

    ``SA_t = <x_t, v1> / ||x_t||`` for each row (rows with ``||x|| = 0`` have no SA and are left
    out of the SA statistics). Returns 0-dim fp32 tensors ``sa_pos`` (fraction SA > 0),
    ``sa_imbalance`` (``|2 sa_pos - 1|``), ``sa_mean``, ``sa_abs_mean``, ``act_max`` (max |x|
    over all rows) and ``act_norm_mean`` (mean ||x|| over all rows), and ``sa_hist``, the int64
    counts per bin of ``bin_edges`` (numpy's convention: half-open bins, the last one closed).
    ``sa_c_abs_mean`` and ``sa_c_imbalance`` are mean |SA| and D of the rows centred on their
    mean: how much of the inputs' *variation* lines up with ``v1`` once the direction they all
    share (after a LayerNorm or a GELU) is taken out.

    Non-finite inputs propagate: a row with NaN makes the SA statistics NaN and is left out of
    the histogram. No rows with SA give NaN SA statistics and a zero histogram, and so does a
    zero ``v1`` (a zero matrix's, see :func:`power_iteration`; ``act_max`` and ``act_norm_mean``
    are still measured). Fewer than two rows, or rows all equal, have no centred SA
    (:func:`centred_norms`). Custom ``bin_edges`` should live on the rows' device (the default is
    cached per device).

    Example:
        >>> stats = sa_statistics(torch.randn(1024, 64) + 1.0, torch.ones(64))
        >>> float(stats["sa_imbalance"])
        1.0
    """
    x = rows.detach().float().reshape(-1, rows.shape[-1])
    dev = x.device
    edges = _edges_on(bin_edges, dev)
    n_bins = edges.numel() - 1
    nan = torch.full((), math.nan, device=dev)
    if x.shape[0] == 0 or x.shape[1] == 0:
        stats = {name: nan.clone() for name in SA_COLUMNS}
        return {**stats, "sa_hist": torch.zeros(n_bins, dtype=torch.int64, device=dev)}

    v = v1.detach().to(dev, torch.float32)
    v = v / torch.linalg.vector_norm(v)  # a zero v1: 0/0, NaN SA
    norms = torch.linalg.vector_norm(x, dim=1)
    has_sa = norms != 0  # a NaN norm counts: its SA is NaN and must show
    sa = ((x @ v) / norms).clamp(-1.0, 1.0)  # |cos| can exceed 1 by rounding
    count = has_sa.float().sum()

    def masked_mean(values: torch.Tensor) -> torch.Tensor:
        return torch.where(has_sa, values, 0.0).sum() / count

    positive = torch.where(torch.isnan(sa), math.nan, (sa > 0).float())
    sa_pos = masked_mean(positive)

    binned = has_sa & torch.isfinite(sa)
    idx = (torch.searchsorted(edges, sa.contiguous(), right=True) - 1).clamp(0, n_bins - 1)
    idx = torch.where(binned, idx, 0)
    # scatter_add_, not bincount: bincount sizes its output from the data, a sync point on CUDA.
    hist = torch.zeros(n_bins, dtype=torch.int64, device=dev).scatter_add_(0, idx, binned.long())

    c_abs_mean, c_imbalance = centred_sa(*centred_parts(x, v, norms, x @ v))
    return {
        "sa_pos": sa_pos,
        "sa_imbalance": (2 * sa_pos - 1).abs(),
        "sa_mean": masked_mean(sa),
        "sa_abs_mean": masked_mean(sa.abs()),
        "sa_hist": hist,
        "act_max": x.abs().amax(),
        "act_norm_mean": norms.mean(),
        "sa_c_abs_mean": c_abs_mean,
        "sa_c_imbalance": c_imbalance,
    }


def centred_parts(
    x: torch.Tensor, v: torch.Tensor, norms: torch.Tensor, dots: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Norms and projections on ``v`` of the rows of ``x`` centred on their mean, from the
    uncentred ``norms`` and ``dots = x @ v`` and one more matrix-vector product (no copy of ``x``).

    >>> x, v = torch.tensor([[1.0, 2.0], [3.0, 2.0]]), torch.tensor([1.0, 0.0])
    >>> [t.tolist() for t in centred_parts(x, v, x.norm(dim=1), x @ v)]
    [[1.0, 1.0], [-1.0, 1.0]]
    """
    mean = x.mean(dim=0)
    return centred_norms(norms, x @ mean, mean.dot(mean)), dots - mean.dot(v)


def centred_norms(
    norms: torch.Tensor, on_mean: torch.Tensor, mean_sq: torch.Tensor
) -> torch.Tensor:
    """``||x - m||`` of rows ``x`` (over the last dimension) and their mean ``m``, from their
    ``norms``, their products ``on_mean`` with ``m`` and ``mean_sq = m·m``: the square expanded.

    The expansion cancels where a row equals the mean (one row, or rows all equal): it leaves
    up to ~7 ε||x||² of rounding in fp32 (measured on widths 8 to 262144) instead of 0, a
    centred row of noise whose SA would count (one row gave D = 1, full collapse). Where every
    row's squared centred norm is at most ``CENTRED_TOL`` ||x||², the rows count as all equal
    and their centred norms as 0 (no centred SA); so does one row, whatever the rounding. Rows
    that vary by less than ~0.3 % of their norm (a common offset ~300x their spread) are
    therefore read as all equal.

    >>> x = torch.tensor([[1.0, 2.0], [1.0, 2.0]])
    >>> centred_norms(x.norm(dim=1), x @ x[0], x[0].dot(x[0])).tolist()
    [0.0, 0.0]
    """
    if norms.shape[-1] < 2:  # one row is its mean
        return torch.zeros_like(norms)
    squared = norms.square() - 2 * on_mean + mean_sq
    equal = (squared <= CENTRED_TOL * norms.square()).all(dim=-1, keepdim=True)
    return torch.where(equal, 0.0, squared.clamp_min(0)).sqrt()


def centred_sa(norms: torch.Tensor, dots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean |SA| and D over the last dimension, from centred rows' norms and projections on v1.

    Rows with zero norm are left out, as in :func:`sa_statistics`; NaN propagates.

    >>> [round(float(t), 3) for t in centred_sa(torch.tensor([1.0, 2.0, 0.0]), torch.tensor([0.5, -1.0, 0.0]))]
    [0.5, 0.0]
    """
    has = norms != 0
    count = has.sum(dim=-1)
    sa = (dots / norms).clamp(-1.0, 1.0)
    abs_mean = torch.where(has, sa.abs(), 0.0).sum(dim=-1) / count
    positive = torch.where(torch.isnan(sa), math.nan, (sa > 0).float())
    pos = torch.where(has, positive, 0.0).sum(dim=-1) / count
    return abs_mean, (2 * pos - 1).abs()
