"""One check: every per-layer statistic, computed on the device, moved to the host in one copy."""

from __future__ import annotations

import contextlib
import math

import torch

from collector.batched import SA_COLUMNS, back_to_order, layer_table, power_groups
from collector.distributed import Ranks, full
from collector.host import ToHost
from collector.layers import MonitoredLayer
from collector.norms import global_norm, stable_rank, weight_and_grad_norms
from collector.spectral import SA_BINS, power_iteration, sa_statistics, v_drift
from collector.updates import sketch, update_ratio, update_ratios
from storage.entities import LAYER_STATISTICS


class SpectralState:
    """What a check keeps for the next one, per layer: the top right singular vector (warm
    starts) and the step and sketch of the weights (the update ratio)."""

    def __init__(self) -> None:
        self.v: dict[str, torch.Tensor] = {}
        self.sketches: dict[str, tuple[int, torch.Tensor]] = {}

    def update_ratio(self, name: str, weight: torch.Tensor, step: int | None) -> torch.Tensor:
        """The layer's update ratio since the previous check; remembers this check's sketch."""
        now = sketch(weight)
        before_step, before = self.sketches.get(name, (None, None))
        if step is None or before_step is None:
            ratio = update_ratio(now, None, 0)
        else:
            ratio = update_ratio(now, before, step - before_step)
        self.sketches[name] = (step, now)
        return ratio

    def update_ratios(
        self, names: list[str], weights: list[torch.Tensor], step: int | None
    ) -> torch.Tensor:
        """:meth:`update_ratio` of many layers, as one 1-D tensor (see :func:`update_ratios`)."""
        now = [sketch(w) for w in weights]
        earlier = [self.sketches.get(name, (None, None)) for name in names]
        steps = [0 if step is None or s is None else step - s for s, _ in earlier]
        ratios = update_ratios(now, [b for _, b in earlier], steps)
        for name, sketched in zip(names, now, strict=True):
            self.sketches[name] = (step, sketched)
        return ratios


@torch.no_grad()
def run_check(
    layers: list[MonitoredLayer],
    rows: dict[str, torch.Tensor],
    state: SpectralState,
    bin_edges: torch.Tensor = SA_BINS,
    ranks: Ranks | None = None,
    step: int | None = None,
) -> tuple[list[dict], dict[str, float]]:
    """Statistics of every layer for one check, and the global norms over those layers.

    Returns ``(layer_rows, global_scalars)``: one dict per layer with the contract's statistic
    names (``None`` where not measured: no input sample this step) and ``sa_hist``, and
    ``{"grad_norm": ..., "weight_norm": ...}`` over the monitored layers' distinct weights (a
    weight shared by two layers counts once, as in ``clip_grad_norm_``). ``step`` (the
    training step of this check) dates the weight sketches behind ``update_ratio``; without it
    the update ratio is not measured.

    With ``ranks`` (distributed training) every rank must call this at the same check: sharded
    weights are gathered a power group at a time, norms summed over shards, and the SA statistics
    combine all ranks' input samples (see :mod:`collector.distributed`).

    This waits for the device; :func:`start_check` is the same check without the wait.
    """
    return start_check(layers, rows, state, bin_edges, ranks, step).result()


@torch.no_grad()
def start_check(
    layers: list[MonitoredLayer],
    rows: dict[str, torch.Tensor],
    state: SpectralState,
    bin_edges: torch.Tensor = SA_BINS,
    ranks: Ranks | None = None,
    step: int | None = None,
) -> PendingCheck:
    """:func:`run_check`, queued: the device work is launched and its one host copy started,
    and the caller goes on; :meth:`PendingCheck.result` waits for the copy and builds the rows.

    What ``Monitor.log`` runs on a check step, so that the training thread never waits for
    the device (the writer thread does). Under DDP and FSDP2 the ranks combine their SA
    statistics with two all-reduces on the device; FSDP2's weights are gathered a power group
    at a time. Only a model whose weights sit on several devices takes the per-layer path,
    which waits here.

    >>> check = start_check(layers, rows, state, step=100)  # doctest: +SKIP
    >>> layer_rows, totals = check.result()                 # on the writer thread  # doctest: +SKIP
    """
    if not layers:
        return PendingCheck.done([], {})
    with _without_autocast(layers[0].weight.device), _full_fp32_matmuls():
        return _start_check(layers, rows, state, bin_edges, ranks, step)


class PendingCheck:
    """One check's statistics on their way to the host (see :func:`start_check`)."""

    def __init__(
        self,
        layers,
        copy: ToHost,
        measured: list[bool] | None,
        grads_present: list[bool],
        distinct: list[bool],
    ):
        """``measured=None``: which layers were measured comes back with the table, as its
        last column (when ranks combine their samples, only the device knows). ``distinct``:
        whether each layer's weight is the first of its kind (see :func:`_distinct`)."""
        self._parts = (layers, copy, measured, grads_present, distinct)
        self._result: tuple[list[dict], dict] | None = None

    @classmethod
    def done(cls, layer_rows: list[dict], totals: dict) -> PendingCheck:
        check = cls([], ToHost([]), [], [], [])
        check._result = (layer_rows, totals)
        return check

    def result(self) -> tuple[list[dict], dict[str, float]]:
        """``(layer_rows, global_scalars)`` as :func:`run_check` returns them; waits for the
        host copy the first time."""
        if self._result is None:
            layers, copy, measured, grads_present, distinct = self._parts
            table, hists = copy.lists()
            if measured is None:
                measured = [row.pop() > 0 for row in table]
            self._result = _rows(layers, table, hists, measured, grads_present, distinct)
        return self._result


def _without_autocast(device: torch.device):
    """A check computes in fp32 even when ``log()`` is called inside the loop's autocast block
    (matrix products there would run in bf16: σ1 to 3 significant digits)."""
    try:
        return torch.autocast(device.type, enabled=False)
    except RuntimeError:  # a device type autocast does not know: nothing to turn off
        return contextlib.nullcontext()


@contextlib.contextmanager
def _full_fp32_matmuls():
    """A check's matrix products in full fp32 even where the loop allows TF32
    (``torch.set_float32_matmul_precision("high")``, ``allow_tf32``: nanoGPT, Trainer's
    ``tf32=True``), which keeps 10 mantissa bits: σ1 and the SA projections to ~1e-3, and the
    centred norms' cancellation far above :data:`collector.spectral.CENTRED_TOL`."""
    precision = torch.get_float32_matmul_precision()
    if precision == "highest":
        yield
        return
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)


def _start_check(layers, rows, state, bin_edges, ranks, step) -> PendingCheck:
    params = [layer.weight for layer in layers]
    sharded = ranks is not None and ranks.sharded(params)
    if sharded:
        weight_norms, grad_norms = ranks.sharded_norms(params)
    else:
        weight_norms, grad_norms = weight_and_grad_norms(params)
    grads_present = [p.grad is not None for p in params]
    distinct = _distinct(params)
    matrices = [layer.matrix(p) for layer, p in zip(layers, params, strict=True)]  # out × in
    names = [layer.name for layer in layers]

    if _batchable(matrices):
        if sharded:
            table, hists, measured, counts, updates = _gathered_tables(
                matrices, names, rows, state, bin_edges, step
            )
        else:
            table, hists, measured, counts = layer_table(matrices, names, rows, state.v, bin_edges)
            updates = state.update_ratios(names, matrices, step)
        extra = []
        if ranks is not None and ranks.combines_inputs:  # DDP, FSDP2: every rank's inputs
            sa, hists, present = ranks.combine_sa_table(table[:, 2:], hists, counts)
            table = torch.cat([table[:, :2], sa], dim=1)
            measured, extra = None, [present[:, None].float()]
        columns = torch.stack([grad_norms, weight_norms], dim=1).to(table.device)
        sigma1 = table[:, 0:1]
        updates = updates.to(table.device)
        table = torch.cat(
            [columns, sigma1, stable_rank(columns[:, 1:2], sigma1), table[:, 1:], updates[:, None]]
            + extra,
            dim=1,
        )
        return PendingCheck(layers, ToHost([table, hists]), measured, grads_present, distinct)

    n_bins = bin_edges.numel() - 1
    spectra, sa_stats, samples = [], [], []
    for layer in layers:
        weight = layer.matrix(full(layer.weight))  # a sharded weight is gathered (a collective)
        sigma1, v1, _ = power_iteration(weight, state.v.get(layer.name))
        drift = v_drift(v1, state.v.get(layer.name))
        state.v[layer.name] = v1  # a NaN v1 is replaced by a cold start at the next check
        sample = rows.get(layer.name)
        usable = sample is not None and sample.shape[-1] == v1.shape[0]
        sa_stats.append(sa_statistics(sample, v1, bin_edges) if usable else None)
        samples.append(sample if usable else None)
        spectra.append((sigma1, drift, state.update_ratio(layer.name, weight, step)))
    if ranks is not None and ranks.combines_inputs:
        sa_stats = _combined(ranks, sa_stats, samples, n_bins, weight_norms.device)

    per_layer, hists, measured = [], [], []
    for i, ((sigma1, drift, update), sa) in enumerate(zip(spectra, sa_stats, strict=True)):
        device = sigma1.device
        if sa is not None:
            measured.append(True)
        else:
            nan = torch.full((), math.nan, device=device)
            sa = {name: nan for name in SA_COLUMNS} | {
                "sa_hist": torch.zeros(n_bins, dtype=torch.int64, device=device)
            }
            measured.append(False)
        values = {
            "grad_norm": grad_norms[i].to(device),
            "weight_norm": weight_norms[i].to(device),
            "sigma1": sigma1,
            "stable_rank": stable_rank(weight_norms[i].to(device), sigma1),
            "v_drift": drift,
            "update_ratio": update,
        } | {name: sa[name].to(device) for name in SA_COLUMNS}
        per_layer.append(torch.stack([values[c].float().reshape(()) for c in LAYER_STATISTICS]))
        hists.append(sa["sa_hist"])

    # sync point: one host transfer per device for the whole check.
    table = torch.stack([t.cpu() if t.device.type != "cpu" else t for t in per_layer]).tolist()
    hist_table = torch.stack([h.cpu() for h in hists]).tolist()
    return PendingCheck.done(*_rows(layers, table, hist_table, measured, grads_present, distinct))


def _combined(
    ranks: Ranks,
    stats: list[dict | None],
    samples: list[torch.Tensor | None],
    n_bins: int,
    device: torch.device,
) -> list[dict | None]:
    """The per-layer path's SA statistics of all ranks' samples, through the table the stacked
    path combines (:meth:`Ranks.combine_sa_table`); None for layers no rank sampled."""
    n = len(stats)
    table = torch.full((n, len(SA_COLUMNS)), math.nan, device=device)
    hists = torch.zeros(n, n_bins, dtype=torch.int64, device=device)
    counts = torch.zeros(n, 2, device=device)
    for i, (sa, x) in enumerate(zip(stats, samples, strict=True)):
        if sa is None or x is None:
            continue
        x = x.detach().reshape(-1, x.shape[-1]).to(device, torch.float32)
        counts[i, 0] = (torch.linalg.vector_norm(x, dim=1) != 0).sum()  # rows with an SA
        counts[i, 1] = x.shape[0]
        table[i] = torch.stack([sa[name].to(device).float().reshape(()) for name in SA_COLUMNS])
        hists[i] = sa["sa_hist"].to(device)
    table, hists, present = ranks.combine_sa_table(table, hists, counts)
    present = present.tolist()  # sync point: this path reads its statistics back anyway
    return [
        dict(zip(SA_COLUMNS, table[i].unbind(), strict=True)) | {"sa_hist": hists[i]}
        if present[i]
        else None
        for i in range(n)
    ]


def _gathered_tables(matrices, names, rows, state, bin_edges, step):
    """:func:`layer_table` and the update ratios of sharded matrices (FSDP2), one power group at
    a time: the group's full matrices are gathered (a collective per layer, in the same order
    on every rank), measured and dropped before the next group's, so at most one group's
    (``MAX_STACK_ELEMENTS``, or one big layer) is whole at once. Outputs in the layers' order."""
    tables, hists, counts, updates, order, measured = [], [], [], [], [], {}
    for group in power_groups(matrices):
        whole = [full(matrices[i]) for i in group]
        group_names = [names[i] for i in group]
        table, hist, group_measured, count = layer_table(
            whole, group_names, rows, state.v, bin_edges
        )
        tables.append(table)
        hists.append(hist)
        counts.append(count)
        updates.append(state.update_ratios(group_names, whole, step))
        measured.update(zip(group, group_measured, strict=True))
        order += group
    back = back_to_order(order, tables[0].device)
    table, hist, count, update = (
        torch.cat(parts) if back is None else torch.cat(parts).index_select(0, back)
        for parts in (tables, hists, counts, updates)
    )
    return table, hist, [measured[i] for i in range(len(names))], count, update


def _batchable(matrices: list[torch.Tensor]) -> bool:
    """Whether the stacked path applies: 2-D matrices on one device (sharded ones included:
    FSDP2's are gathered a group at a time)."""
    device = matrices[0].device
    return all(m.device == device and m.dim() == 2 for m in matrices)


def _distinct(params: list[torch.Tensor]) -> list[bool]:
    """Whether each parameter is the first in ``params`` that is this very tensor: a weight
    shared by several layers (tied, or one layer under two names) enters the global norms once.
    Decided at the check, on the training thread: FSDP2 swaps the modules' parameters at each
    forward, so the writer thread could see another tensor."""
    seen: set[int] = set()
    first = []
    for p in params:
        first.append(id(p) not in seen)
        seen.add(id(p))
    return first


def _rows(layers, table, hist_table, measured, grads_present, distinct) -> tuple[list[dict], dict]:
    """The per-layer rows (one per layer) and the global norms (over distinct weights) from the
    host copy of a check's table."""
    out = []
    for layer, values, hist, has_rows, has_grad in zip(
        layers, table, hist_table, measured, grads_present, strict=True
    ):
        row = dict(zip(LAYER_STATISTICS, values, strict=True))
        if not has_grad:
            row["grad_norm"] = None
        if not has_rows:
            for name in SA_COLUMNS:
                row[name] = None
            hist = None
        row["layer"] = layer.name
        row["sa_hist"] = hist
        out.append(row)
    counted = [row for row, first in zip(out, distinct, strict=True) if first]
    finite_grads = [r["grad_norm"] for r in counted if r["grad_norm"] is not None]
    totals = {
        "weight_norm": _global([r["weight_norm"] for r in counted]),
        "grad_norm": _global(finite_grads) if finite_grads else None,
    }
    return out, totals


def _global(values: list[float]) -> float:
    return float(global_norm(torch.tensor(values, dtype=torch.float64)))
