"""The stacked check path gives the per-layer path's statistics (spectral.py is the oracle)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import collector
from bench.common import rank_0_of_2
from collector import batched, checks, spectral
from collector.batched import group_by_shape, power_iteration_stack, v_drift_stack
from collector.checks import SpectralState, run_check
from collector.distributed import Ranks
from collector.layers import select_layers
from collector.spectral import power_iteration, sample_rows, v_drift


def _model() -> nn.Module:
    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Linear(16, 48), nn.GELU(), nn.Linear(48, 16)) for _ in range(3)]
    return nn.Sequential(*blocks, nn.Linear(16, 7, bias=False), nn.Linear(7, 5))


def _check(model, layers, state, rows, batched: bool, monkeypatch, step=None):
    monkeypatch.setattr(checks, "_batchable", lambda *_: batched)
    return run_check(layers, rows, state, step=step)


def _rows(model, layers, x):
    seen = {}
    handles = [
        layer.module.register_forward_hook(
            lambda m, i, o, name=layer.name: seen.__setitem__(name, i[0].detach().clone())
        )
        for layer in layers
    ]
    loss = model(x).square().mean()
    loss.backward()
    for h in handles:
        h.remove()
    gen = torch.Generator().manual_seed(0)
    return {name: sample_rows(t, 64, gen) for name, t in seen.items()}


def _assert_same(a, b):
    for row_a, row_b in zip(a, b, strict=True):
        assert row_a.keys() == row_b.keys()
        for key, va in row_a.items():
            vb = row_b[key]
            if isinstance(va, float):
                assert vb is not None
                assert (math.isnan(va) and math.isnan(vb)) or va == pytest.approx(
                    vb, rel=1e-4, abs=1e-5
                ), key
            elif key == "sa_hist" and va is not None:
                assert (
                    sum(abs(p - q) for p, q in zip(va, vb, strict=True)) <= 2
                )  # rounding at edges
            else:
                assert va == vb, key


@pytest.mark.parametrize(
    "stack_max, gpu_like",
    [(batched.CPU_STACK_MAX_NUMEL, False), (0, False), (math.inf, True)],
    ids=["cpu", "big-weights-one-by-one", "gpu-path"],
)
def test_stacked_check_matches_per_layer_over_warm_checks(monkeypatch, stack_max, gpu_like):
    monkeypatch.setattr(batched, "CPU_STACK_MAX_NUMEL", stack_max)  # 0: big weights one by one
    monkeypatch.setattr(batched, "CPU_STACK_ROWS", gpu_like)  # rows stacked by width
    monkeypatch.setattr(batched, "CPU_PAD_SHAPES", gpu_like)  # shapes padded into one stack
    model = _model()
    layers = select_layers(model)
    weights = [layer.weight for layer in layers]
    assert len(group_by_shape(weights)) < len(layers)
    assert len(batched.power_groups(weights)) == (1 if gpu_like else 4)  # four shapes
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    stacked, single = SpectralState(), SpectralState()
    gen = torch.Generator().manual_seed(1)
    for check in range(4):
        x = torch.randn(4, 32, 16, generator=gen)
        rows = _rows(model, layers, x)
        if check == 2:
            rows.pop(layers[1].name)  # a layer whose hook never ran
            layers[-1].module.weight.grad = None  # and one without a gradient
        got, totals = _check(model, layers, stacked, rows, True, monkeypatch, step=10 * check)
        want, want_totals = _check(model, layers, single, rows, False, monkeypatch, 10 * check)
        _assert_same(got, want)
        ratios = [(g["update_ratio"], w["update_ratio"]) for g, w in zip(got, want, strict=True)]
        if check:  # tiny numbers (~1e-7): _assert_same's absolute tolerance would pass anything
            assert all(g == pytest.approx(w, rel=1e-5) for g, w in ratios)
        else:
            assert all(math.isnan(g) and math.isnan(w) for g, w in ratios)
        assert totals["weight_norm"] == pytest.approx(want_totals["weight_norm"], rel=1e-6)
        opt.step()
        opt.zero_grad()


def test_stacked_power_iteration_keeps_non_finite_and_zero_weights():
    w = torch.randn(3, 6, 4, generator=torch.Generator().manual_seed(2))
    w[0, 1, 1] = math.nan
    w[1, 2, 3] = math.inf
    w[2].zero_()
    sigma1, v1 = power_iteration_stack(list(w), [None, None, None])
    assert math.isnan(sigma1[0]) and sigma1[1] == math.inf and sigma1[2] == 0
    assert torch.all(v1[2] == 0)  # a zero matrix has no v1, as per layer


_SA_ONLY = ("sa_pos", "sa_imbalance", "sa_mean", "sa_abs_mean", "sa_c_abs_mean", "sa_c_imbalance")


@pytest.mark.parametrize("gpu_like", [False, True], ids=["cpu", "gpu-path"])
def test_a_zero_weight_gets_no_sa_statistics_and_no_drift(monkeypatch, gpu_like):
    # LoRA's B and zero-initialised output projections: σ1 = 0 and no v1, so no SA against the
    # power iteration's random start vector. One zero layer is stacked with two of its shape,
    # the other (7 × 5) is alone in its shape group; on the GPU path all share one stack.
    monkeypatch.setattr(batched, "CPU_STACK_ROWS", gpu_like)
    monkeypatch.setattr(batched, "CPU_PAD_SHAPES", gpu_like)
    model = _model()
    layers = select_layers(model)
    zero = [layers[3], layers[-1]]
    for layer in zero:
        nn.init.zeros_(layer.module.weight)
    stacked, single = SpectralState(), SpectralState()
    gen = torch.Generator().manual_seed(2)
    for check in range(2):
        rows = _rows(model, layers, torch.randn(4, 32, 16, generator=gen))
        got, _ = _check(model, layers, stacked, rows, True, monkeypatch, step=check)
        want, _ = _check(model, layers, single, rows, False, monkeypatch, step=check)
        _assert_same(got, want)
        for layer in zero:
            row = got[layer.position]
            assert row["sigma1"] == 0.0 if check == 0 else row["sigma1"] > 0
            assert math.isnan(row["v_drift"])  # no v1 now (check 0) or before (check 1)
            if check == 0:
                assert all(math.isnan(row[name]) for name in _SA_ONLY)
                assert sum(row["sa_hist"]) == 0
                assert row["act_norm_mean"] > 0 and row["act_max"] > 0  # its inputs are measured
            else:  # the weight moved: it has a v1 again
                assert all(not math.isnan(row[name]) for name in _SA_ONLY)
                assert sum(row["sa_hist"]) == 64
        with torch.no_grad():  # trained away from zero
            for layer in zero:
                layer.module.weight.normal_(generator=gen)


@pytest.mark.parametrize("stack_rows", [False, True], ids=["cpu", "gpu-path"])
def test_one_input_row_has_no_centred_sa(monkeypatch, stack_rows):
    # Batch size 1 without a sequence dimension, or an MoE expert given one token: a centred
    # row is zero. Rounding used to leave a tiny centred norm, and sa_c_imbalance 1.0 (full
    # collapse) on ~40 % of layers. Rows all equal (a repeated token) are the same case.
    monkeypatch.setattr(batched, "CPU_STACK_ROWS", stack_rows)
    model = _model()
    layers = select_layers(model)
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        rows = _rows(model, layers, torch.randn(1, 16, generator=gen))
        got, _ = _check(model, layers, SpectralState(), rows, True, monkeypatch)
        want, _ = _check(model, layers, SpectralState(), rows, False, monkeypatch)
        _assert_same(got, want)
        for row in got:
            assert math.isnan(row["sa_c_abs_mean"]) and math.isnan(row["sa_c_imbalance"])
            assert not math.isnan(row["sa_imbalance"])
    for seed in range(10):
        gen = torch.Generator().manual_seed(seed)
        x = [torch.relu(torch.randn(1, w, generator=gen)).repeat(4, 1) for w in (32, 32, 16)]
        v1 = [torch.randn(t.shape[1], generator=gen) for t in x]
        table, _ = batched.sa_statistics_stack(x, v1)
        assert table[:, -2:].isnan().all(), seed


def test_stacked_power_iteration_and_drift_match_spectral_when_warm():
    gen = torch.Generator().manual_seed(3)
    ws = [torch.randn(20, 12, generator=gen) for _ in range(3)]
    cold = [power_iteration(w) for w in ws]
    moved = [w + 0.05 * torch.randn(20, 12, generator=gen) for w in ws]
    prev = [c[1] for c in cold]
    prev[1] = torch.full_like(prev[1], math.nan)  # a NaN state restarts cold
    sigma1, v1 = power_iteration_stack(moved, prev)
    drift = v_drift_stack(v1, prev)
    for i, w in enumerate(moved):
        s_ref, v_ref, _ = power_iteration(w, prev[i])
        assert float(sigma1[i]) == pytest.approx(float(s_ref), rel=1e-5)
        assert abs(float(v1[i] @ v_ref)) == pytest.approx(1.0, abs=1e-4)
        ref_drift = v_drift(v_ref, prev[i])
        assert math.isnan(ref_drift) == math.isnan(drift[i])
    assert math.isnan(v_drift_stack(v1, [None] * 3)[0])


def test_weights_of_different_shapes_padded_into_one_stack_match_spectral():
    gen = torch.Generator().manual_seed(4)
    shapes = [(20, 12), (12, 20), (20, 12), (7, 5), (6, 6), (9, 3)]
    ws = [torch.randn(*shape, generator=gen) for shape in shapes]
    ws[3][1, 2] = math.nan
    ws[4][0, 0] = math.inf
    ws[5].zero_()
    group = batched.power_groups(ws, pad=True)
    assert group == [[5, 3, 4, 0, 2, 1]]  # one stack, smallest shapes first
    stacked = [ws[i] for i in group[0]]
    # cold, then warm with one NaN state and one new layer
    sigma1, v1 = power_iteration_stack(stacked, [None] * len(stacked))
    assert v1.shape == (6, 20) and (v1[0, 3:] == 0).all() and (v1[3, 12:] == 0).all()
    prev = [v1[j, : w.shape[1]] for j, w in enumerate(stacked)]
    prev[3] = torch.full_like(prev[3], math.nan)
    prev[4] = None
    moved = [w + 0.05 * torch.randn(w.shape, generator=gen) for w in stacked]
    sigma1, v1 = power_iteration_stack(moved, prev)
    drift = v_drift_stack(v1, prev)
    for j, w in enumerate(moved):
        # one cold layer gives the whole stack the cold iterations
        s_ref, v_ref, _ = power_iteration(w, prev[j], iters=spectral.COLD_ITERS)
        got = v1[j, : w.shape[1]]
        if math.isfinite(s_ref):  # (a NaN or Inf weight leaves NaN in the padding: 0 × NaN)
            assert (v1[j, w.shape[1] :] == 0).all()
            assert float(sigma1[j]) == pytest.approx(float(s_ref), rel=1e-5)
            assert float(got @ v_ref) == pytest.approx(1.0, abs=1e-4)  # the same sign, too
        else:
            assert str(float(sigma1[j])) == str(float(s_ref))  # nan or inf, as per layer
        if prev[j] is not None and math.isfinite(s_ref):
            want = v_drift(v_ref, prev[j])
            assert math.isnan(want) == math.isnan(drift[j])
            if not math.isnan(want):
                assert float(drift[j]) == pytest.approx(float(want), abs=1e-4)
    assert math.isnan(drift[4])  # no previous vector


@pytest.mark.parametrize("stack_rows", [False, True], ids=["cpu", "gpu-path"])
def test_layers_sharing_a_sample_get_each_their_own_statistics(monkeypatch, stack_rows):
    """q/k/v read one sample; in the stack of width 16 it feeds three layers, another one and a
    third (bf16) two, so directions are zero-padded; the layers come out of the samples' order."""
    monkeypatch.setattr(batched, "CPU_STACK_ROWS", stack_rows)
    gen = torch.Generator().manual_seed(5)
    a, b, wide = (torch.randn(64, w, generator=gen) for w in (16, 16, 40))
    c = torch.randn(64, 16, generator=gen).bfloat16()
    a[3] = 0.0  # a row without an SA
    b[:, 0] += 4.0  # an offset the centred statistics take out
    rows = [a, b, a, wide, c, a, c]
    v1 = [torch.randn(x.shape[1], generator=gen) for x in rows]
    table, hist = batched.sa_statistics_stack(rows, v1)
    for i, (x, v) in enumerate(zip(rows, v1, strict=True)):
        want = spectral.sa_statistics(x, v)
        for j, column in enumerate(batched.SA_COLUMNS):
            assert float(table[i, j]) == pytest.approx(float(want[column]), rel=1e-5, abs=1e-6)
        assert (hist[i] - want["sa_hist"]).abs().sum() <= 2  # rounding at the bin edges
    assert not torch.equal(table[0], table[2])  # one sample, two directions


@pytest.mark.parametrize("stack_rows", [False, True], ids=["cpu", "gpu-path"])
def test_a_check_reads_a_shared_sample_once_and_matches_the_per_layer_path(monkeypatch, stack_rows):
    monkeypatch.setattr(batched, "CPU_STACK_ROWS", stack_rows)
    torch.manual_seed(6)
    model = nn.ModuleDict({name: nn.Linear(16, 16) for name in ("q", "k", "v", "o")})
    layers = select_layers(model)
    x = torch.randn(4, 32, 16)
    shared = x.reshape(-1, 16)
    rows = {"q": shared, "k": shared, "v": shared, "o": torch.randn(128, 16)}
    state = SpectralState()
    got, _ = _check(model, layers, state, rows, True, monkeypatch)
    want, _ = _check(model, layers, SpectralState(), rows, False, monkeypatch)
    _assert_same(got, want)
    means = []  # the samples' means taken: one pass over a sample's rows each
    real_mean = torch.Tensor.mean
    monkeypatch.setattr(
        torch.Tensor, "mean", lambda t, *a, **k: means.append(t.shape) or real_mean(t, *a, **k)
    )
    _check(model, layers, state, rows, True, monkeypatch)
    of_samples = [shape for shape in means if shape[-1] == 16]  # not the tail's, of norms
    assert of_samples == ([(128, 16)] * 2 if not stack_rows else [(2, 128, 16)])


class _HostTraffic(TorchDispatchMode):
    """Records the ops that, on a GPU, move data between host and device outside the one
    transfer a check makes: a tensor built from host data (``lift_fresh``: a blocking copy)
    and a value read on the host (``_local_scalar_dense``: ``float``, ``bool``, ``.item()``)."""

    SYNCING = ("aten.lift_fresh", "aten._local_scalar_dense")

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if str(func).startswith(self.SYNCING):
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


def test_a_warm_stacked_check_has_no_hidden_sync_point(monkeypatch):
    # Each of these stalled an H200 mid-check: torch.tensor(list, device=...) per shape group
    # drains the queue of training work, and the rest of the check is then launched one
    # kernel at a time. The table's one .cpu() is the check's only sync (not an op here).
    monkeypatch.setattr(checks, "_global", lambda values: 0.0)  # host-side floats, by design
    batched._on_device.cache_clear()  # filled by earlier tests' checks of the same shapes
    spectral._cold_start.cache_clear()
    model = _model()
    layers = select_layers(model)
    state = SpectralState()
    gen = torch.Generator().manual_seed(1)
    for step in (0, 10):
        rows = _rows(model, layers, torch.randn(4, 32, 16, generator=gen))
        if step == 0:
            _check(model, layers, state, rows, True, monkeypatch)  # cold: caches are filled
            continue
        with _HostTraffic() as traffic:
            layer_rows, _ = run_check(layers, rows, state, step=step)
    assert traffic.seen == []
    assert all(row["update_ratio"] is not None and row["sa_pos"] is not None for row in layer_rows)


@pytest.mark.parametrize("ddp", [False, True], ids=["one-process", "ddp-rank-0"])
def test_a_watched_loop_syncs_only_at_the_check_transfer(monkeypatch, sqlite_url, tmp_path, ddp):
    # The whole hot path of a plain loop: the input hooks on the check step's forward pass,
    # log() on a step without a check (loss kept on the device) and on a warm check step.
    # Under DDP also the combined SA table and the ranks' flag table, read a step later.
    monkeypatch.setattr(checks, "_global", lambda values: 0.0)  # host-side floats, by design
    batched._on_device.cache_clear()
    spectral._cold_start.cache_clear()
    model = _model()
    gen = torch.Generator().manual_seed(1)
    with collector.watch(model, run="sync", db=sqlite_url, every=2, spool_dir=tmp_path) as m:
        if ddp:
            m.ranks = rank_0_of_2()
        for step in range(5):
            with _HostTraffic() as traffic:
                loss = model(torch.randn(4, 32, 16, generator=gen)).square().mean()
                loss.backward()
                m.log(step, loss=loss)
            model.zero_grad()
            if step >= 3:  # 3: no check; 4: the third check, warm
                assert traffic.seen == [], step
        assert m.checks == 3 and m.errors == 0


@pytest.mark.parametrize("stack_rows", [False, True], ids=["cpu", "gpu-path"])
def test_bf16_samples_are_held_as_bf16_and_measured_in_fp32(
    monkeypatch, sqlite_url, tmp_path, stack_rows
):
    monkeypatch.setattr(batched, "CPU_STACK_ROWS", stack_rows)
    monkeypatch.setattr(batched, "CPU_PAD_SHAPES", stack_rows)
    model = _model()
    with collector.watch(model, run="bf16", db=sqlite_url, every=1, spool_dir=tmp_path) as m:
        m.prepare(0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(torch.randn(4, 32, 16)).float().square().mean()
        loss.backward()
        rows = dict(m._sampler._rows)
        # autocast casts inside each layer: the first one sees the fp32 batch, the rest bf16
        assert {n: r.dtype for n, r in rows.items() if r.dtype != torch.bfloat16} == {
            m.layers[0].name: torch.float32
        }
        state = SpectralState()
        state.v = dict(m._spectral.v)
        got, _ = run_check(m.layers, rows, state)
        want, _ = run_check(m.layers, {k: r.float() for k, r in rows.items()}, m._spectral)
        for row_got, row_want in zip(got, want, strict=True):  # fp32 from bf16 is exact
            assert row_got.keys() == row_want.keys()
            for key, value in row_got.items():
                same = value == row_want[key]
                assert same or (math.isnan(value) and math.isnan(row_want[key])), key
        m.log(0, loss=loss)
    assert m.errors == 0


@pytest.mark.parametrize("batched_path", [True, False], ids=["stacked", "per-layer"])
def test_a_check_inside_autocast_still_computes_in_fp32(monkeypatch, batched_path):
    # A plain loop may call log() inside its autocast block; the check must not run in bf16.
    model = _model()
    layers = select_layers(model)
    rows = _rows(model, layers, torch.randn(4, 32, 16, generator=torch.Generator().manual_seed(1)))
    outside, inside = SpectralState(), SpectralState()
    want, _ = _check(model, layers, outside, rows, batched_path, monkeypatch, step=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = _check(model, layers, inside, rows, batched_path, monkeypatch, step=0)
    for row_got, row_want in zip(got, want, strict=True):
        for key, value in row_got.items():
            same = value == row_want[key]
            assert same or (math.isnan(value) and math.isnan(row_want[key])), key


@pytest.mark.parametrize("batched_path", [True, False], ids=["stacked", "per-layer"])
def test_a_check_multiplies_in_full_fp32_where_the_loop_allows_tf32(monkeypatch, batched_path):
    # TF32 keeps 10 mantissa bits: σ1 and the SA projections to ~1e-3, and the centred norms'
    # cancellation far above CENTRED_TOL (all-equal rows would get a centred SA again).
    from torch.utils._python_dispatch import TorchDispatchMode

    class Precisions(TorchDispatchMode):
        seen: set[str] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten.mm.default, torch.ops.aten.bmm.default):
                self.seen.add(torch.get_float32_matmul_precision())
            return func(*args, **(kwargs or {}))

    model = _model()
    layers = select_layers(model)
    rows = _rows(model, layers, torch.randn(4, 32, 16, generator=torch.Generator().manual_seed(1)))
    torch.set_float32_matmul_precision("high")
    try:
        with Precisions() as mode:
            _check(model, layers, SpectralState(), rows, batched_path, monkeypatch, step=0)
        assert torch.get_float32_matmul_precision() == "high"  # the loop's setting is back
    finally:
        torch.set_float32_matmul_precision("highest")
    assert mode.seen == {"highest"}


def _as_two_ranks(monkeypatch, combine):
    """``combine(rank)`` run as rank 1, then as rank 0 of a two-rank job whose all-reduces add
    rank 1's tensors (take their maximum for ``max``); rank 0's result."""
    sent = []

    def keep(self, tensor, op):  # noqa: ARG001
        sent.append(tensor.clone())
        return tensor

    monkeypatch.setattr(Ranks, "_all_reduce", keep)
    combine(1)
    theirs = iter(sent)

    def reduce(self, tensor, op):  # noqa: ARG001
        other = next(theirs)
        return tensor + other if op == "sum" else torch.maximum(tensor, other)

    monkeypatch.setattr(Ranks, "_all_reduce", reduce)
    return combine(0)


def _union_oracle(samples, name, v1):
    """What one process would measure for a layer whose inputs are both ranks' rows: the
    statistics of the union, except the centred ones, a per-batch quantity each rank computes
    on its own rows and the ranks average by their rows with an SA. None if no rank sampled."""
    parts = [rank_rows[name] for rank_rows in samples if name in rank_rows]
    if not parts:
        return None
    union = spectral.sa_statistics(torch.cat(parts), v1)
    for centred in ("sa_c_abs_mean", "sa_c_imbalance"):
        weights = [float((torch.linalg.vector_norm(x, dim=-1) != 0).sum()) for x in parts]
        stats = [spectral.sa_statistics(x, v1) for x in parts]
        values = [float(st[centred]) for st in stats]
        # a rank whose rows have an SA but no centred one (one row) leaves it to the others
        weights = [
            0.0 if math.isnan(v) and not math.isnan(float(st["sa_pos"])) else w
            for w, v, st in zip(weights, values, stats, strict=True)
        ]
        union[centred] = torch.tensor(
            sum(w * v for w, v in zip(weights, values, strict=True) if w) / sum(weights)
        )
    return union


@pytest.mark.parametrize("path", ["stacked", "per-layer"])
def test_ddp_combines_the_statistics_of_both_ranks_rows(monkeypatch, path):
    # DDP and FSDP2 checks take the stacked path; a model on several devices the per-layer one.
    # Either way rank 0 must end with the statistics one process would find on both ranks'
    # inputs together.
    model = _model()
    layers = select_layers(model)
    names = [layer.name for layer in layers]
    weights = [layer.weight for layer in layers]
    gen = torch.Generator().manual_seed(5)
    samples = [_rows(model, layers, torch.randn(4, 32, 16, generator=gen)) for _ in range(2)]
    samples[0][names[2]] = samples[0][names[2]].clone()
    samples[0][names[2]][3, 1] = math.nan  # a NaN activation on rank 0 only
    samples[1][names[0]] = samples[1][names[0]].clone()
    samples[1][names[0]][0] = 0.0  # a row without an SA: counts for act_norm_mean, not for SA
    samples[1].pop(names[1])  # a layer rank 1 did not sample
    samples[1][names[3]] = samples[1][names[3]][:1]  # one row on rank 1: no centred SA there
    for rank_rows in samples:
        rank_rows.pop(names[4])  # and one no rank sampled
    state_v: dict = {}
    batched.layer_table(weights, names, samples[0], state_v)  # a warm state to start from
    used_v = dict(state_v)
    batched.layer_table(weights, names, samples[0], used_v)  # the v1 a check from it finds
    ranks = Ranks(rank=0, world=2, reduces=True)
    n_bins = spectral.SA_BINS.numel() - 1

    def stacked(rank):
        table, hists, _, counts = batched.layer_table(weights, names, samples[rank], dict(state_v))
        return ranks.combine_sa_table(table[:, 2:], hists, counts)

    def per_layer(rank):
        rows = [samples[rank].get(name) for name in names]
        stats = [
            None if x is None else spectral.sa_statistics(x, used_v[name])
            for x, name in zip(rows, names, strict=True)
        ]
        combined = checks._combined(ranks, stats, rows, n_bins, torch.device("cpu"))
        nan_row = torch.full((len(spectral.SA_COLUMNS),), math.nan)
        table = torch.stack(
            [
                nan_row if c is None else torch.stack([c[k] for k in spectral.SA_COLUMNS])
                for c in combined
            ]
        )
        hists = torch.stack(
            [torch.zeros(n_bins, dtype=torch.long) if c is None else c["sa_hist"] for c in combined]
        )
        return table, hists, torch.tensor([c is not None for c in combined])

    if path == "stacked":
        _as_two_ranks(monkeypatch, stacked)  # each rank's layer groups, seen once (cached)
        with _HostTraffic() as traffic:  # then no host data, no host read: a GPU would stall
            table, hists, present = _as_two_ranks(monkeypatch, stacked)
        assert traffic.seen == []
    else:
        table, hists, present = _as_two_ranks(monkeypatch, per_layer)
    want = [_union_oracle(samples, name, used_v[name]) for name in names]
    assert present.tolist() == [w is not None for w in want]
    assert not present[4] and present[1]
    for i, expected in enumerate(want):
        if expected is None:
            assert torch.isnan(table[i]).all() and hists[i].sum() == 0
            continue
        for j, name in enumerate(spectral.SA_COLUMNS):
            got, ref = float(table[i, j]), float(expected[name])
            assert (math.isnan(got) and math.isnan(ref)) or got == pytest.approx(ref, rel=1e-5), (
                i,
                name,
            )
        assert (hists[i] - expected["sa_hist"]).abs().sum() <= 2  # rounding at bin edges
    assert math.isnan(table[2, spectral.SA_COLUMNS.index("act_max")])
    assert not math.isnan(table[3, spectral.SA_COLUMNS.index("sa_c_imbalance")])  # rank 0's
    assert int(hists[1].sum()) == samples[0][names[1]].shape[0]  # rank 0's rows alone


def test_sharded_weights_measured_a_group_at_a_time_match_the_whole_table():
    # FSDP2's path gathers each power group's full matrices and measures them alone; put back
    # in the layers' order, its outputs are the single-process ones (full() of a plain tensor
    # is the tensor, so the per-group bookkeeping is what is tested here; gathering DTensors
    # is tested by the 2-process FSDP2 run).
    model = _model()
    layers = select_layers(model)
    names = [layer.name for layer in layers]
    weights = [layer.weight for layer in layers]
    groups = batched.power_groups(weights)
    assert [i for g in groups for i in g] != list(range(len(layers)))  # reordered by groups
    rows = _rows(model, layers, torch.randn(4, 32, 16, generator=torch.Generator().manual_seed(6)))
    rows.pop(names[1])
    whole_state, grouped_state = SpectralState(), SpectralState()
    for step in (0, 10):
        want = batched.layer_table(weights, names, rows, whole_state.v)
        want_updates = whole_state.update_ratios(names, weights, step)
        got = checks._gathered_tables(weights, names, rows, grouped_state, spectral.SA_BINS, step)
        table, hists, measured, counts, updates = got
        assert measured == want[2] and not measured[1]
        torch.testing.assert_close(table, want[0], equal_nan=True)
        assert torch.equal(hists, want[1]) and torch.equal(counts, want[3])
        torch.testing.assert_close(updates, want_updates, equal_nan=True)
        with torch.no_grad():
            for w in weights:
                w.mul_(1.01)
