"""One check's statistics with the layers stacked: a few ops per weight shape, not per layer.

Per layer, power iteration, v drift and the SA statistics take ~100 small tensor ops; on a
small model or a GPU the cost of a check is their Python and launch overhead, not their maths.
A transformer has a handful of weight shapes (qkv, proj, fc, ...), so this module stacks the
layers of one shape for power iteration and v drift (on a GPU, small weights of different shapes
zero-padded into one stack), and every layer with the same number of sampled rows for the tail
of the SA statistics: the op count of a check drops by the number of blocks. Same results as
:mod:`collector.spectral` per layer (to float rounding). Imports only torch.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict

import torch

from collector import spectral

MAX_STACK_ELEMENTS = 1 << 25
"""Elements stacked at once, of weights or of sampled rows (128 MiB in fp32; the stack is a
copy, twice for weights on CPU)."""

CPU_STACK_ROWS = False
"""Whether the SA statistics stack the sampled rows of one width on a CPU too, as on a GPU
(:func:`_row_passes`). Off: on a CPU the copy costs what the saved ops gain (``bench/check_cost.py``
gave 6–7 ms either way on the small GPT, 12 against 14 ms on the medium one, per check)."""

PAD_MAX_ELEMENTS = 1 << 23
"""Weights of different shapes are zero-padded into one stack for power iteration while the
padded stack stays at most this big (32 MiB in fp32): on a GPU a small model's check is
launch-bound, and each shape's stack costs ~125 ops (:func:`power_groups`)."""

CPU_PAD_SHAPES = False
"""Whether :func:`power_groups` pads shapes together on a CPU too, as on a GPU. Off: a CPU is
bound by arithmetic, which padding only adds."""

CPU_STACK_MAX_NUMEL = 1 << 17
"""On CPU, weights larger than this (128 Ki elements) are iterated one by one: copying them
into a stack costs more than the ops it saves (measured in ``bench/check_cost.py``)."""


def group_by_shape(
    weights: list[torch.Tensor], max_elements: int = MAX_STACK_ELEMENTS
) -> list[list[int]]:
    """Indices of ``weights`` grouped by shape, each group holding at most ``max_elements``.

    >>> group_by_shape([torch.zeros(3, 2), torch.zeros(4, 2), torch.zeros(3, 2)])
    [[0, 2], [1]]
    """
    by_shape: dict[tuple, list[int]] = defaultdict(list)
    for i, w in enumerate(weights):
        by_shape[tuple(w.shape)].append(i)
    groups = []
    for idx in by_shape.values():
        per_chunk = max(1, max_elements // max(weights[idx[0]].numel(), 1))
        groups += [idx[i : i + per_chunk] for i in range(0, len(idx), per_chunk)]
    return groups


def power_groups(
    weights: list[torch.Tensor], pad: bool | None = None, max_padded: int = PAD_MAX_ELEMENTS
) -> list[list[int]]:
    """Indices of ``weights`` (2-D) grouped for :func:`power_iteration_stack`.

    By shape (:func:`group_by_shape`); with ``pad`` (default: on a GPU, or
    :data:`CPU_PAD_SHAPES`), the smallest groups are then merged, whatever their shapes, while
    the zero-padded stack of a merged group holds at most ``max_padded`` elements. A small
    GPT's five shapes become one stack: ~125 ops per shape fewer, on a GPU where a check's
    time follows its op count.

    >>> power_groups([torch.zeros(3, 2), torch.zeros(4, 2), torch.zeros(3, 2)], pad=True)
    [[0, 2, 1]]
    """
    groups = group_by_shape(weights)
    if pad is None:
        pad = weights[0].device.type != "cpu" or CPU_PAD_SHAPES if weights else False
    if not pad:
        return groups
    merged: list[list[int]] = []
    bucket: list[int] = []
    rows = cols = 0
    for group in sorted(groups, key=lambda g: weights[g[0]].numel()):
        r, c = weights[group[0]].shape
        if bucket and (len(bucket) + len(group)) * max(rows, r) * max(cols, c) > max_padded:
            merged.append(bucket)
            bucket, rows, cols = [], 0, 0
        bucket, rows, cols = bucket + group, max(rows, r), max(cols, c)
    return merged + [bucket] if bucket else merged


def _pad_to(v: torch.Tensor, width: int) -> torch.Tensor:
    """``v`` (a vector) with zeros appended up to ``width``."""
    return v if v.shape[-1] == width else torch.nn.functional.pad(v, (0, width - v.shape[-1]))


def _stacked(weights: list[torch.Tensor]) -> torch.Tensor:
    """``(G, rows, cols)`` fp32: the weights, zero-padded to the largest of each dimension.

    Zero rows and columns change no singular value, and the iterates stay zero in them."""
    if len({tuple(w.shape) for w in weights}) == 1:
        return torch.stack([w.detach().float() for w in weights])
    rows = max(w.shape[0] for w in weights)
    cols = max(w.shape[1] for w in weights)
    out = weights[0].new_zeros((len(weights), rows, cols), dtype=torch.float32)
    for i, w in enumerate(weights):
        out[i, : w.shape[0], : w.shape[1]] = w.detach()
    return out


@functools.lru_cache(maxsize=256)
def _cold_rows(widths: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """The cold-start vectors of layers of these widths, zero-padded to the widest: ``(G, max)``
    (shared: do not modify it)."""
    width = max(widths)
    if len(set(widths)) == 1:
        return spectral._cold_start(width, device).expand(len(widths), width)
    return torch.stack([_pad_to(spectral._cold_start(n, device), width) for n in widths])


_TINY = torch.finfo(torch.float32).tiny


@functools.lru_cache(maxsize=1024)
def _on_device(values: tuple, device: torch.device) -> torch.Tensor:
    """``torch.tensor(values)`` on ``device``, made once (shared: do not modify it).

    Built from host data, it is a blocking copy on a GPU: a sync point that drains the queue of
    training work and leaves the device idle while the rest of the check is launched. A check's
    groups and masks are the same at every check.
    """
    return torch.tensor(values, device=device)


def back_to_order(order: list[int], device: torch.device) -> torch.Tensor | None:
    """The index that puts rows computed in ``order`` (a permutation of the layers) back in the
    layers' order, for ``index_select``; None when ``order`` is already theirs. Cached on the
    device, as :func:`_on_device`.

    >>> back_to_order([2, 0, 1], torch.device("cpu"))
    tensor([1, 2, 0])
    """
    if order == sorted(order):
        return None
    return _on_device(tuple(sorted(range(len(order)), key=order.__getitem__)), device)


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` scaled to unit norm along its last dimension; a zero row stays zero."""
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(_TINY)


@torch.no_grad()
def power_iteration_stack(
    weights: list[torch.Tensor], vs: list[torch.Tensor | None], iters: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """σ1 and v1 of ``weights``, warm-started from ``vs`` (``None``: cold).

    :func:`collector.spectral.power_iteration` for each matrix: ``WARM_ITERS`` iterations when
    every ``v`` is given, else ``COLD_ITERS`` for all (warm ones only get more accurate); a zero
    or non-finite ``v`` restarts from the cold vector; a warm ``v1`` keeps the sign of its
    ``v``; a zero weight gives σ1 0 and v1 0 (it has none), a NaN weight σ1 NaN, an infinite
    one Inf. Weights of different shapes are zero-padded into one stack. Returns
    ``(sigma1, v1)`` of shapes ``(G,)`` and ``(G, in)``, fp32, where ``in`` is the widest
    weight's: row ``i`` of ``v1`` is zero beyond weight ``i``'s width.

    >>> w = torch.diag(torch.tensor([3.0, 1.0]))
    >>> sigma1, v1 = power_iteration_stack([w, 2 * w], [None, None])
    >>> [round(float(s), 4) for s in sigma1]
    [3.0, 6.0]
    """
    w = _stacked(weights)
    g, n_out, n_in = w.shape
    cold = _cold_rows(tuple(x.shape[1] for x in weights), w.device)
    given = [v is not None for v in vs]
    if iters is None:
        iters = spectral.WARM_ITERS if all(given) else spectral.COLD_ITERS
    v_prev = torch.stack(
        [
            cold[i] if v is None else _pad_to(v.detach().to(w.device, torch.float32), n_in)
            for i, v in enumerate(vs)
        ]
    )
    norm = torch.linalg.vector_norm(v_prev, dim=1, keepdim=True)
    v = torch.where(torch.isfinite(norm) & (norm > 0), v_prev / norm, cold)
    # Row vectors times Wᵀ as a transposed view: on a CPU, a batched matrix × column vector is
    # slow, and a contiguous copy of Wᵀ cost more than the products saved (bench/check_cost.py).
    wt = w.transpose(1, 2)
    v = v.unsqueeze(1)  # (G, 1, in): row vectors through the loop, no reshapes per iteration
    for _ in range(iters):
        # Alternating u/v steps: the iterates of WᵀW without squaring σ (overflow in fp32).
        u = _unit_rows(torch.bmm(v, wt))  # W v
        v = _unit_rows(torch.bmm(u, w))  # Wᵀ u
    v = v.squeeze(1)
    if any(given):
        flip = (v * v_prev).sum(dim=1, keepdim=True) < 0
        if not all(given):
            flip &= _on_device(tuple(given), w.device).unsqueeze(1)
        v = torch.where(flip, -v, v)
    sigma1 = torch.linalg.vector_norm(torch.bmm(v.unsqueeze(1), wt).squeeze(1), dim=1)
    v = torch.where(sigma1.unsqueeze(1) == 0, 0.0, v)  # a zero matrix: v1 = 0, as per layer
    flat = w.flatten(1)  # amax/amin, not aminmax: its per-row CPU kernel is ~15x slower
    amax = torch.maximum(-flat.amin(dim=1), flat.amax(dim=1))  # ≤ σ1; NaN stays NaN, Inf Inf
    return torch.where(torch.isfinite(amax), sigma1, amax), v


def _spectra(
    weights: list[torch.Tensor], vs: list[torch.Tensor | None]
) -> tuple[torch.Tensor, torch.Tensor]:
    """σ1 ``(G,)`` and v1 ``(G, in)`` (zero-padded as :func:`power_iteration_stack`'s):
    stacked, or one by one for big weights on CPU and for a group of one layer (a stack of
    one is a copy for nothing)."""
    big = weights[0].device.type == "cpu" and weights[0].numel() > CPU_STACK_MAX_NUMEL
    if big or len(weights) == 1:
        found = [spectral.power_iteration(w, v)[:2] for w, v in zip(weights, vs, strict=True)]
        width = max(w.shape[1] for w in weights)
        return torch.stack([s for s, _ in found]), torch.stack(
            [_pad_to(v, width) for _, v in found]
        )
    return power_iteration_stack(weights, vs)


@torch.no_grad()
def v_drift_stack(v_new: torch.Tensor, v_prev: list[torch.Tensor | None]) -> torch.Tensor:
    """:func:`collector.spectral.v_drift` row by row; NaN where there is no previous vector."""
    given = [v is not None for v in v_prev]
    if not any(given):
        return torch.full((v_new.shape[0],), math.nan, device=v_new.device)
    width = v_new.shape[1]  # the previous vectors are zero-padded to it, as v_new's rows are
    b = torch.stack(
        [v_new[i] if v is None else _pad_to(v.to(v_new), width) for i, v in enumerate(v_prev)]
    )
    a = v_new / torch.linalg.vector_norm(v_new, dim=1, keepdim=True)
    b = b / torch.linalg.vector_norm(b, dim=1, keepdim=True)
    b = torch.where((a * b).sum(dim=1, keepdim=True) < 0, -b, b)
    drift = 2 * torch.atan2(
        torch.linalg.vector_norm(a - b, dim=1), torch.linalg.vector_norm(a + b, dim=1)
    )
    if all(given):
        return drift
    return torch.where(_on_device(tuple(given), drift.device), drift, math.nan)


SA_COLUMNS = spectral.SA_COLUMNS


def _distinct(rows: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[int]]:
    """The distinct tensors of ``rows`` (by identity), and each entry's index among them: the
    q, k and v projections of a block are fed one input and share one sample of it.

    >>> x, y = torch.zeros(2, 3), torch.zeros(2, 3)
    >>> _distinct([x, y, x])[1]
    [0, 1, 0]
    """
    index: dict[int, int] = {}
    samples = []
    for x in rows:
        if id(x) not in index:
            index[id(x)] = len(samples)
            samples.append(x)
    return samples, [index[id(x)] for x in rows]


def _row_passes(
    rows: list[torch.Tensor], v1: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The passes over each layer's rows: their norms ``(G, k)``, their projections on v1 and
    on their mean with (v1·mean, mean·mean) appended ``(G, 2, k + 1)``, and max |x| ``(G,)``.

    Each distinct sample is read once, whatever number of layers it feeds (:func:`_distinct`):
    its norms, mean and max |x| once, its projections on its mean and on every such layer's v1
    in one product. On a CPU each sample is read where it lies, without temporaries. On a GPU
    the samples of one width are stacked (a copy of their rows, at most ``MAX_STACK_ELEMENTS``
    at a time) and done at once: a few ops per width instead of per sample.
    """
    samples, sample_of = _distinct(rows)
    users: list[list[int]] = [[] for _ in samples]  # the layers each sample feeds
    for layer, s in enumerate(sample_of):
        users[s].append(layer)
    if samples[0].device.type == "cpu" and not CPU_STACK_ROWS:
        groups = [[s] for s in range(len(samples))]
        parts = [_sample_passes(samples[s], [v1[layer] for layer in users[s]]) for [s] in groups]
        join = torch.stack
    else:
        groups = group_by_shape(samples)  # one sample size: by width, each stack ≤ 128 MiB
        parts = [
            _stacked_passes([samples[s] for s in g], [users[s] for s in g], v1) for g in groups
        ]
        join = torch.cat
    blocks, norms, act_max = zip(*parts, strict=True)
    norms, act_max = join(norms), join(act_max)
    if len(groups) == len(rows):  # a sample per layer, in the layers' order: nothing to pick
        return norms, torch.cat(blocks).view(len(rows), 2, -1), act_max
    # Which rows of the blocks each layer takes: per sample, a row per v1, then one for its mean
    v_row, mean_row = [0] * len(rows), [0] * len(samples)
    offset = 0
    for group, block in zip(groups, blocks, strict=True):
        n_dirs = block.shape[0] // len(group)
        for j, s in enumerate(group):
            for i, layer in enumerate(users[s]):
                v_row[layer] = offset + j * n_dirs + i
            mean_row[s] = offset + (j + 1) * n_dirs - 1
        offset += block.shape[0]
    device = samples[0].device
    projections = torch.cat(blocks)
    picks = [r for layer, s in enumerate(sample_of) for r in (v_row[layer], mean_row[s])]
    if picks != list(range(len(picks))):  # shared samples, or samples stacked out of order
        projections = projections.index_select(0, _on_device(tuple(picks), device))
    order = {s: i for i, s in enumerate(s for group in groups for s in group)}
    at = [order[s] for s in sample_of]
    if at != list(range(len(at))):
        where = _on_device(tuple(at), device)
        norms, act_max = norms.index_select(0, where), act_max.index_select(0, where)
    return norms, projections.view(len(rows), 2, -1), act_max


def _sample_passes(
    x: torch.Tensor, vs: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One sample ``(k, in)`` and the v1 of each of the ``m`` layers it feeds: its projections
    on each v1 and on its mean, with (·mean) appended ``(m + 1, k + 1)``, its norms ``(k,)`` and
    max |x| (0-dim)."""
    x = x.float()
    vs = [v.float() for v in vs]
    vs = [v / torch.linalg.vector_norm(v) for v in vs]
    directions = torch.stack([*vs, x.mean(dim=0)])  # (m + 1, in): each v1, then the rows' mean
    # (m + 1, k) as (m + 1, in) @ (in, k); (·mean) for centring
    on_mean = (directions @ directions[-1])[:, None]
    block = torch.cat([directions @ x.T, on_mean], 1)
    # max |x| without an |x| copy (vector_norm(ord=inf) is ~10x slower on CPU)
    return block, torch.linalg.vector_norm(x, dim=1), torch.maximum(-x.amin(), x.amax())


def _stacked_passes(
    samples: list[torch.Tensor], users: list[list[int]], v1: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_sample_passes` of ``g`` samples of one shape at once, the ``i``-th feeding the
    layers ``users[i]``: ``(g·(m + 1), k + 1)`` (the samples that feed fewer than ``m`` layers
    repeat a direction, never picked), ``(g, k)`` and ``(g,)``."""
    x = torch.stack(samples).float()  # (g, k, in)
    m = max(len(u) for u in users)
    # (g, m, in); a sample's first v1 repeated pads its directions; a zero v1 gives NaN SA
    vs = [v1[layer] for u in users for layer in u + [u[0]] * (m - len(u))]
    v = torch.stack(vs).float().view(len(users), m, -1)
    v = v / torch.linalg.vector_norm(v, dim=2, keepdim=True)
    directions = torch.cat([v, x.mean(dim=1, keepdim=True)], dim=1)  # (g, m + 1, in)
    on_mean = torch.bmm(directions, directions[:, -1:, :].transpose(1, 2))  # (g, m + 1, 1)
    block = torch.cat([torch.bmm(directions, x.transpose(1, 2)), on_mean], 2)
    flat = x.flatten(1)
    act_max = torch.maximum(-flat.amin(dim=1), flat.amax(dim=1))
    return block.flatten(0, 1), torch.linalg.vector_norm(x, dim=2), act_max


@torch.no_grad()
def sa_statistics_stack(
    rows: list[torch.Tensor], v1: list[torch.Tensor], bin_edges: torch.Tensor = spectral.SA_BINS
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`collector.spectral.sa_statistics` of ``G`` layers at once.

    ``rows``: ``G`` tensors ``(k, in_g)`` with the same ``k > 0``; ``v1``: ``G`` vectors
    ``(in_g,)``; the widths may differ, and layers fed one input may be given the same tensor,
    whose rows are then read once. After the passes over the rows (norms, the projections on
    v1 and on the rows' mean, max |x|: per sample on a CPU, per width on a GPU), everything
    runs once on ``(G, k)``. Returns a ``(G, 8)`` fp32 table in the order of ``SA_COLUMNS``
    and the ``(G, bins)`` int64 histograms.

    >>> x = torch.randn(256, 16)
    >>> table, hist = sa_statistics_stack([x, x], [torch.ones(16), -torch.ones(16)])
    >>> bool(table[0, 2] == -table[1, 2])  # sa_mean against v1 and -v1
    True
    """
    table, hist, _ = _sa_stack(rows, v1, bin_edges)
    return table, hist


def _sa_stack(
    rows: list[torch.Tensor], v1: list[torch.Tensor], bin_edges: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`sa_statistics_stack`, and each layer's count of rows with an SA (non-zero)."""
    norms, projections, act_max = _row_passes(rows, v1)  # (G, k), (G, 2, k + 1), (G,)
    dots, on_mean = projections[:, 0, :-1], projections[:, 1, :-1]
    mean_v, mean_sq = projections[:, 0, -1:], projections[:, 1, -1:]
    c_norms = spectral.centred_norms(norms, on_mean, mean_sq)  # ||x - m||, expanded
    c_abs_mean, c_imbalance = spectral.centred_sa(c_norms, dots - mean_v)

    g = norms.shape[0]
    edges = spectral._edges_on(bin_edges, norms.device)
    n_bins = edges.numel() - 1
    has_sa = norms != 0  # a NaN norm counts: its SA is NaN and must show
    count = has_sa.sum(dim=1)
    # rows without SA (zero norm: 0/0) count nowhere: 0 adds nothing and is not > 0
    sa = (dots / norms).clamp(-1.0, 1.0).masked_fill(~has_sa, 0.0)  # |cos| > 1 by rounding
    positive = (sa > 0).float().masked_fill(sa.isnan(), math.nan)
    sums = torch.stack([positive, sa, sa.abs()], dim=1).sum(dim=2) / count[:, None]
    sa_pos, sa_mean, sa_abs_mean = sums.unbind(dim=1)
    binned = has_sa & torch.isfinite(sa)
    idx = (torch.searchsorted(edges, sa.contiguous(), right=True) - 1).clamp(0, n_bins - 1)
    idx = idx.masked_fill(~binned, 0)
    hist = torch.zeros(g, n_bins, dtype=torch.int64, device=norms.device)
    hist.scatter_add_(1, idx, binned.long())  # not bincount: its output size is a sync point
    table = torch.stack(
        [
            sa_pos,
            (2 * sa_pos - 1).abs(),
            sa_mean,
            sa_abs_mean,
            act_max,
            norms.mean(dim=1),
            c_abs_mean,
            c_imbalance,
        ],
        dim=1,
    )
    return table, hist, count


@torch.no_grad()
def layer_table(
    weights: list[torch.Tensor],
    names: list[str],
    rows: dict[str, torch.Tensor],
    state_v: dict[str, torch.Tensor],
    bin_edges: torch.Tensor = spectral.SA_BINS,
) -> tuple[torch.Tensor, torch.Tensor, list[bool], torch.Tensor]:
    """σ1, v drift and the SA statistics of every layer, in the layers' order.

    ``weights`` (2-D, on one device) are grouped by :func:`power_groups`; ``state_v`` (name →
    v1) is read for warm starts and updated. Returns an ``(L, 2 + 8)`` fp32 table (``sigma1``,
    ``v_drift``, then ``SA_COLUMNS``; NaN where a layer had no usable input sample), the
    ``(L, bins)`` histograms (zero where none), per layer whether its inputs were measured, and
    the ``(L, 2)`` fp32 counts behind the SA statistics (rows with an SA, rows sampled; zero
    where none), which combining ranks weigh them by.
    """
    device = weights[0].device
    n_bins = bin_edges.numel() - 1
    n = len(weights)
    spectra = torch.empty(n, 2, device=device)
    sa_table = torch.full((n, len(SA_COLUMNS)), math.nan, device=device)
    hists = torch.zeros(n, n_bins, dtype=torch.int64, device=device)
    counts = torch.zeros(n, 2, device=device)
    measured = [False] * n
    v1_of: list[torch.Tensor | None] = [None] * n
    for group in power_groups(weights):
        prev = [state_v.get(names[i]) for i in group]
        sigma1, v1 = _spectra([weights[i] for i in group], prev)
        drift = v_drift_stack(v1, prev)
        where = _on_device(tuple(group), device)
        spectra.index_copy_(0, where, torch.stack([sigma1, drift], dim=1))
        for j, i in enumerate(group):
            v1_of[i] = v1[j, : weights[i].shape[1]]  # without the padding
            state_v[names[i]] = v1_of[i]  # a NaN or zero v1: a cold start at the next check
    # inputs: layers whose sample fits, all widths at once, stacked by sample size
    by_rows: dict[int, list[int]] = defaultdict(list)
    for i, name in enumerate(names):
        sample = rows.get(name)
        if sample is None or sample.shape[-1] != weights[i].shape[1]:
            continue
        if sample.numel() == 0:  # measured, but no rows: NaN statistics, empty histogram
            measured[i] = True
            continue
        by_rows[math.prod(sample.shape[:-1])].append(i)
    for k, members in by_rows.items():
        flat: dict[int, torch.Tensor] = {}  # one view per sample: layers may share one
        for i in members:
            sample = rows[names[i]]
            if id(sample) not in flat:
                flat[id(sample)] = sample.reshape(-1, weights[i].shape[1])
        x = [flat[id(rows[names[i]])] for i in members]
        table, hist, count = _sa_stack(x, [v1_of[i] for i in members], bin_edges)
        where = _on_device(tuple(members), device)
        sa_table.index_copy_(0, where, table)
        hists.index_copy_(0, where, hist)
        counts.index_copy_(
            0, where, torch.stack([count.float(), torch.full_like(table[:, 0], k)], 1)
        )
        for i in members:
            measured[i] = True
    return torch.cat([spectra, sa_table], dim=1), hists, measured, counts
