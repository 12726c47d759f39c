"""Spectral statistics against oracles: torch.linalg.svd for power iteration, numpy for SA."""

import math

import numpy as np
import pytest
import torch

from collector.spectral import (
    COLD_ITERS,
    SA_BINS,
    WARM_ITERS,
    align_sign,
    power_iteration,
    sa_statistics,
    sample_rows,
    v_drift,
)

SHAPES = [(96, 96), (160, 48), (48, 160)]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The oracles are small SVDs: on a busy shared CPU, thread hand-offs cost 100x the work.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def top_singular(w: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    return s[0].item(), vh[0].float(), u[:, 0].float()


def abs_cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return abs(torch.dot(a, b).item()) / (a.norm().item() * b.norm().item())


def low_rank_plus_noise(out: int, inn: int, gen: torch.Generator) -> torch.Tensor:
    """Rank-8 signal whose σ2/σ1 = 0.9, plus dense noise: a small spectral gap."""
    u = torch.linalg.qr(torch.randn(out, 8, generator=gen))[0]
    v = torch.linalg.qr(torch.randn(inn, 8, generator=gen))[0]
    s = torch.linspace(1.0, 0.3, 8)
    return u @ torch.diag(s) @ v.T + 0.01 * torch.randn(out, inn, generator=gen)


# --- power iteration ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_cold_power_iteration_matches_svd(shape):
    gen = torch.Generator().manual_seed(1)
    w = low_rank_plus_noise(*shape, gen)
    sigma1, v1, u1 = power_iteration(w)
    s_ref, v_ref, u_ref = top_singular(w)
    assert abs(sigma1.item() - s_ref) / s_ref < 1e-5
    assert 1 - abs_cos(v1, v_ref) < 1e-4
    assert 1 - abs_cos(u1, u_ref) < 1e-4
    assert torch.allclose(w @ v1, sigma1 * u1, atol=1e-5)
    assert sigma1.dtype == torch.float32 and sigma1.dim() == 0


@pytest.mark.parametrize("shape", SHAPES)
def test_cold_power_iteration_on_gaussian_init_gets_sigma1(shape):
    # At initialisation σ1 ≈ σ2, so v1 is barely defined; σ1 itself must still be close.
    torch.manual_seed(2)
    w = torch.nn.Linear(shape[1], shape[0]).weight.detach()
    sigma1, _, _ = power_iteration(w)
    s_ref, _, _ = top_singular(w)
    assert sigma1.item() <= s_ref * (1 + 1e-6)  # a Rayleigh quotient never overshoots
    assert abs(sigma1.item() - s_ref) / s_ref < 1e-3


@pytest.mark.parametrize("shape", SHAPES)
def test_warm_start_tracks_a_changing_weight(shape):
    """Simulated training: the top direction turns 0.05 rad per check under noisy updates."""
    gen = torch.Generator().manual_seed(3)
    out, inn = shape
    u = torch.linalg.qr(torch.randn(out, 4, generator=gen))[0]
    basis = torch.linalg.qr(torch.randn(inn, 5, generator=gen))[0]
    s = torch.tensor([1.0, 0.8, 0.6, 0.4])
    noise = 0.02 * torch.randn(out, inn, generator=gen)

    def weight(check: int) -> torch.Tensor:
        angle = 0.05 * check
        v_top = math.cos(angle) * basis[:, 0] + math.sin(angle) * basis[:, 4]
        v = torch.cat([v_top[:, None], basis[:, 1:4]], dim=1)
        return u @ torch.diag(s) @ v.T + noise

    sigma1, v1, _ = power_iteration(weight(0))
    first_ref = top_singular(weight(0))[1]
    for check in range(1, 21):
        noise += 2e-3 * torch.randn(out, inn, generator=gen)  # Adam-like dense jitter
        w = weight(check)
        v_prev = v1
        sigma1, v1, u1 = power_iteration(w, v=v_prev)
        s_ref, v_ref, _ = top_singular(w)
        # Measured with WARM_ITERS = 4: ≤ 3e-6 and ≤ 1e-5; two iterations would fail these.
        assert abs(sigma1.item() - s_ref) / s_ref < 1.5e-5
        assert 1 - abs_cos(v1, v_ref) < 5e-5
        assert torch.dot(v1, v_prev).item() > 0  # the sign stays continuous
    assert abs_cos(v_ref, first_ref) < 0.6  # the target really moved (1 rad in all)


def test_warm_start_needs_fewer_iterations_than_cold():
    gen = torch.Generator().manual_seed(4)
    w = low_rank_plus_noise(96, 96, gen)
    _, v1, _ = power_iteration(w)
    w_next = w + 1e-3 * torch.randn(96, 96, generator=gen)
    s_ref, v_ref, _ = top_singular(w_next)
    warm, v_warm, _ = power_iteration(w_next, v=v1)
    cold, v_cold, _ = power_iteration(w_next, iters=WARM_ITERS)
    assert abs(warm.item() - s_ref) / s_ref < 1e-5
    assert 1 - abs_cos(v_warm, v_ref) < 1e-4
    assert 1 - abs_cos(v_cold, v_ref) > 1e-2  # the same few iterations from cold are not enough
    assert WARM_ITERS < COLD_ITERS


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_weights_are_computed_in_fp32(dtype):
    gen = torch.Generator().manual_seed(5)
    w = low_rank_plus_noise(160, 48, gen).to(dtype)
    sigma1, v1, u1 = power_iteration(w)
    s_ref, v_ref, _ = top_singular(w.float())
    assert sigma1.dtype == v1.dtype == u1.dtype == torch.float32
    assert abs(sigma1.item() - s_ref) / s_ref < 1e-5
    assert 1 - abs_cos(v1, v_ref) < 1e-4
    sigma1, v1, _ = power_iteration(w, v=v1.to(dtype))
    assert abs(sigma1.item() - s_ref) / s_ref < 1e-5


def test_zero_matrix_gives_zero_sigma_and_no_singular_vectors():
    # A zero matrix (LoRA's B at init) has no v1: the start vector must not pass for one.
    for v in (None, torch.ones(48)):
        sigma1, v1, u1 = power_iteration(torch.zeros(32, 48), v=v)
        assert sigma1.item() == 0.0
        assert torch.all(u1 == 0) and torch.all(v1 == 0)
    # the next check, once the weight has moved, starts cold from that v1 and finds σ1
    w = low_rank_plus_noise(32, 48, torch.Generator().manual_seed(6))
    sigma1, _, _ = power_iteration(w, v=v1, iters=COLD_ITERS)
    assert abs(sigma1.item() - top_singular(w)[0]) / top_singular(w)[0] < 1e-5


def test_non_finite_weights_are_reported_faithfully():
    w = torch.randn(32, 48)
    w_nan = w.clone()
    w_nan[3, 7] = math.nan
    assert math.isnan(power_iteration(w_nan)[0].item())
    w_inf = w.clone()
    w_inf[3, 7] = -math.inf
    assert power_iteration(w_inf)[0].item() == math.inf
    both = w_inf.clone()
    both[0, 0] = math.nan
    assert math.isnan(power_iteration(both)[0].item())


def test_warm_start_from_a_nan_vector_recovers():
    # After a NaN check the stored v is NaN; once the weight is finite again σ1 must be too.
    gen = torch.Generator().manual_seed(6)
    w = low_rank_plus_noise(96, 96, gen)
    _, v_nan, _ = power_iteration(torch.full((96, 96), math.nan))
    assert torch.isnan(v_nan).all()
    sigma1, v1, _ = power_iteration(w, v=v_nan, iters=COLD_ITERS)
    s_ref, v_ref, _ = top_singular(w)
    assert abs(sigma1.item() - s_ref) / s_ref < 1e-5
    assert 1 - abs_cos(v1, v_ref) < 1e-4


# --- sign and drift ----------------------------------------------------------------------------


def test_align_sign_keeps_the_sign_continuous_across_checks():
    gen = torch.Generator().manual_seed(7)
    w = low_rank_plus_noise(48, 96, gen)
    v_prev = None
    raw_flips = 0
    for _ in range(12):
        w = w + 1e-3 * torch.randn(48, 96, generator=gen)
        sign = 1 if torch.rand((), generator=gen).item() < 0.5 else -1
        v = sign * top_singular(w)[1]  # a singular vector's sign is arbitrary
        if v_prev is not None:
            raw_flips += int(torch.dot(v, v_prev).item() < 0)
        v = align_sign(v, v_prev)
        if v_prev is not None:
            assert torch.dot(v, v_prev).item() > 0
        v_prev = v
    assert raw_flips > 0
    assert align_sign(v, None) is v


def test_warm_power_iteration_keeps_the_sign_it_was_given():
    gen = torch.Generator().manual_seed(7)
    w = low_rank_plus_noise(48, 96, gen)
    _, v1, u1 = power_iteration(w)
    _, v_neg, u_neg = power_iteration(w, v=-v1)
    assert torch.allclose(v_neg, -v1, atol=1e-5) and torch.allclose(u_neg, -u1, atol=1e-5)


def test_align_sign_flips_only_when_needed():
    prev = torch.tensor([1.0, 0.0])
    assert torch.equal(align_sign(torch.tensor([-0.6, 0.8]), prev), torch.tensor([0.6, -0.8]))
    assert torch.equal(align_sign(torch.tensor([0.6, 0.8]), prev), torch.tensor([0.6, 0.8]))


@pytest.mark.parametrize("angle", [0.0, 1e-4, 1e-2, 0.3, 1.0, math.pi / 2, 2.5, math.pi])
def test_v_drift_is_the_sign_blind_angle(angle):
    gen = torch.Generator().manual_seed(8)
    basis = torch.linalg.qr(torch.randn(64, 2, generator=gen, dtype=torch.float64))[0]
    a = basis[:, 0]
    b = math.cos(angle) * basis[:, 0] + math.sin(angle) * basis[:, 1]
    expected = min(angle, math.pi - angle)
    drift = v_drift(3.0 * a.float(), b.float())
    assert drift.dtype == torch.float32
    assert abs(drift.item() - expected) < 1e-6 + 1e-3 * expected


def test_v_drift_without_previous_vector_is_nan():
    assert math.isnan(v_drift(torch.ones(4), None).item())


# --- sampling ----------------------------------------------------------------------------------


def labelled_batch(batch: int, seq: int) -> torch.Tensor:
    """Rows whose first feature is their flat index."""
    x = torch.zeros(batch, seq, 3)
    x[..., 0] = torch.arange(batch * seq, dtype=torch.float32).reshape(batch, seq)
    return x


def test_sample_rows_returns_all_rows_when_there_are_few():
    x = labelled_batch(2, 5)
    rows = sample_rows(x, 1024, torch.Generator().manual_seed(0))
    assert torch.equal(rows, x.reshape(10, 3))


def test_sample_rows_is_deterministic_given_the_generator_and_without_replacement():
    x = labelled_batch(4, 100)
    a = sample_rows(x, 64, torch.Generator().manual_seed(1))
    b = sample_rows(x, 64, torch.Generator().manual_seed(1))
    c = sample_rows(x, 64, torch.Generator().manual_seed(2))
    assert a.shape == (64, 3)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a[:, 0].unique().numel() == 64


def test_sample_rows_covers_the_batch_uniformly():
    batch, seq, k, trials = 8, 64, 128, 200
    x = labelled_batch(batch, seq)
    gen = torch.Generator().manual_seed(3)
    hits = torch.zeros(batch * seq)
    for _ in range(trials):
        idx = sample_rows(x, k, gen)[:, 0].long()
        assert idx.div(seq, rounding_mode="floor").unique().numel() == batch  # every element
        hits[idx] += 1
    # Chi-square of the per-row hit counts; under uniform sampling it is ~ df ± sqrt(2 df).
    expected = trials * k / (batch * seq)
    df = batch * seq - 1
    chi2 = ((hits - expected) ** 2 / expected).sum().item()
    assert chi2 < df + 5 * math.sqrt(2 * df)
    per_element = hits.reshape(batch, seq).sum(1)
    assert (per_element - trials * k / batch).abs().max() < 0.1 * trials * k / batch


# --- spectral alignment ------------------------------------------------------------------------


def numpy_sa(rows: np.ndarray, v1: np.ndarray, edges: np.ndarray) -> dict:
    rows = rows.astype(np.float64)
    norms = np.linalg.norm(rows, axis=1)
    keep = norms != 0
    sa = np.clip(rows[keep] @ (v1 / np.linalg.norm(v1)) / norms[keep], -1, 1)
    p = float(np.mean(sa > 0))
    return {
        "sa_pos": p,
        "sa_imbalance": abs(2 * p - 1),
        "sa_mean": float(sa.mean()),
        "sa_abs_mean": float(np.abs(sa).mean()),
        "sa_hist": np.histogram(sa, bins=edges)[0],
        "act_max": float(np.abs(rows).max()),
        "act_norm_mean": float(norms.mean()),
    }


def assert_matches_numpy(rows: torch.Tensor, v1: torch.Tensor, edges=SA_BINS):
    stats = sa_statistics(rows, v1, edges)
    ref = numpy_sa(rows.float().numpy(), v1.float().numpy(), edges.numpy().astype(np.float64))
    for name, value in ref.items():
        if name == "sa_hist":
            assert stats[name].dtype == torch.int64
            # fp32 vs fp64 may move a value that sits on a bin edge to its neighbour.
            assert np.abs(stats[name].numpy() - value).sum() <= 2
            assert stats[name].sum().item() == value.sum()
        else:
            assert stats[name].dtype == torch.float32 and stats[name].dim() == 0
            assert stats[name].item() == pytest.approx(value, rel=1e-5, abs=1e-6), name
    return stats


def test_sa_statistics_match_numpy_with_zero_rows():
    gen = torch.Generator().manual_seed(4)
    rows = torch.randn(500, 32, generator=gen) + 0.3
    rows[::7] = 0.0
    v1 = torch.randn(32, generator=gen)
    stats = assert_matches_numpy(rows, v1)
    assert stats["sa_hist"].sum().item() == 500 - len(range(0, 500, 7))


def test_sa_statistics_match_numpy_with_custom_edges_and_bf16_rows():
    gen = torch.Generator().manual_seed(5)
    rows = torch.randn(300, 16, generator=gen).to(torch.bfloat16)
    edges = torch.tensor([-1.0, -0.5, -0.1, 0.0, 0.1, 0.5, 1.0])
    assert_matches_numpy(rows, torch.randn(16, generator=gen), edges)


def test_one_signed_inputs_have_imbalance_one():
    gen = torch.Generator().manual_seed(6)
    v1 = torch.nn.functional.normalize(torch.randn(32, generator=gen), dim=0)
    rows = (0.5 + torch.rand(256, 1, generator=gen)) * v1 + 0.05 * torch.randn(
        256, 32, generator=gen
    )
    for sign, pos in ((1, 1.0), (-1, 0.0)):
        stats = assert_matches_numpy(sign * rows, v1)
        assert stats["sa_pos"].item() == pos
        assert stats["sa_imbalance"].item() == 1.0


def test_symmetric_inputs_have_imbalance_zero():
    gen = torch.Generator().manual_seed(7)
    half = torch.randn(200, 32, generator=gen)
    stats = assert_matches_numpy(torch.cat([half, -half]), torch.randn(32, generator=gen))
    assert stats["sa_imbalance"].item() == 0.0
    assert abs(stats["sa_mean"].item()) < 1e-6
    assert torch.equal(stats["sa_hist"], stats["sa_hist"].flip(0))


def test_sa_rounded_above_one_is_clamped_into_the_end_bins():
    gen = torch.Generator().manual_seed(8)
    v1 = torch.randn(48, generator=gen)
    rows = torch.logspace(-3, 3, 64)[:, None] * v1
    raw = (rows @ (v1 / v1.norm())) / rows.norm(dim=1)
    over = rows[raw > 1]
    assert len(over) > 0  # fp32 rounding does put these cosines above 1
    for sign, end_bin in ((1, -1), (-1, 0)):
        stats = sa_statistics(sign * over, v1)
        assert stats["sa_hist"][end_bin].item() == stats["sa_hist"].sum().item() == len(over)
        assert stats["sa_mean"].item() == sign * 1.0
        assert stats["sa_abs_mean"].item() == 1.0


def test_sa_on_bin_edges_follows_numpy():
    # SA exactly 0 (an input orthogonal to v1) is not positive and falls in the bin [0, 0.05).
    v1 = torch.tensor([1.0, 0.0, 0.0])
    rows = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, -2.0], [3.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    stats = assert_matches_numpy(rows, v1)
    assert stats["sa_hist"][20].item() == 2
    assert stats["sa_pos"].item() == 0.25


def test_empty_and_all_zero_inputs_give_nan_statistics():
    v1 = torch.ones(8)
    empty = sa_statistics(torch.zeros(0, 8), v1)
    assert torch.equal(empty["sa_hist"], torch.zeros(40, dtype=torch.int64))
    assert all(math.isnan(t.item()) for name, t in empty.items() if name != "sa_hist")

    zeros = sa_statistics(torch.zeros(10, 8), v1)
    assert zeros["sa_hist"].sum().item() == 0
    for name in ("sa_pos", "sa_imbalance", "sa_mean", "sa_abs_mean"):
        assert math.isnan(zeros[name].item())
    assert zeros["act_max"].item() == 0.0 and zeros["act_norm_mean"].item() == 0.0


def test_a_zero_matrix_gets_no_sa_statistics_and_no_drift():
    gen = torch.Generator().manual_seed(10)
    rows = torch.randn(64, 16, generator=gen) + 0.5
    _, v1, _ = power_iteration(torch.zeros(8, 16))
    stats = sa_statistics(rows, v1)
    assert stats["sa_hist"].sum().item() == 0
    for name in ("sa_pos", "sa_imbalance", "sa_mean", "sa_abs_mean", "sa_c_abs_mean"):
        assert math.isnan(stats[name].item()), name
    assert math.isnan(stats["sa_c_imbalance"].item())
    # the inputs are still measured
    other = sa_statistics(rows, torch.randn(16, generator=gen))
    assert stats["act_max"].item() == other["act_max"].item()
    assert stats["act_norm_mean"].item() == other["act_norm_mean"].item()
    assert math.isnan(v_drift(v1, torch.randn(16, generator=gen)).item())
    assert math.isnan(v_drift(torch.randn(16, generator=gen), v1).item())


@pytest.mark.parametrize("n_rows", [1, 2, 5])
@pytest.mark.parametrize("width", [8, 32, 256])
def test_rows_all_equal_have_no_centred_sa(n_rows, width):
    # One row (batch size 1, an MoE expert given one token), or rows all equal: centred on their
    # mean they are zero. Rounding used to leave a tiny centred norm and a centred SA of 0, so
    # sa_c_imbalance read 1.0 (full collapse) on ~40 % of these seeds.
    for seed in range(20):
        gen = torch.Generator().manual_seed(seed)
        x = torch.relu(torch.randn(1, width, generator=gen)).repeat(n_rows, 1)
        if seed % 2:
            x = 1e3 * x + 5.0
        stats = sa_statistics(x, torch.randn(width, generator=gen))
        assert math.isnan(stats["sa_c_abs_mean"].item()), seed
        assert math.isnan(stats["sa_c_imbalance"].item()), seed
        assert not math.isnan(stats["sa_imbalance"].item())  # the rows themselves have an SA


def test_rows_varying_slightly_about_a_large_mean_keep_their_centred_sa():
    # Centred norms of 1 % of the rows' norms are well above the rounding the tolerance drops.
    gen = torch.Generator().manual_seed(11)
    base = torch.randn(64, generator=gen)
    noise = torch.randn(200, 64, generator=gen)
    x = base + 0.01 * base.norm() * noise / noise.norm(dim=1, keepdim=True)
    v1 = torch.randn(64, generator=gen)
    stats = sa_statistics(x, v1)
    centred = (x - x.mean(dim=0)).double()
    sa = centred @ (v1 / v1.norm()).double() / centred.norm(dim=1)
    assert stats["sa_c_abs_mean"].item() == pytest.approx(sa.abs().mean().item(), rel=1e-2)
    assert stats["sa_c_imbalance"].item() == pytest.approx(
        abs(2 * (sa > 0).double().mean().item() - 1), abs=0.02
    )


def test_rows_near_their_mean_among_rows_that_vary_keep_their_centred_sa():
    # A large common offset (un-normalised features, saturated gates): every row's centred norm
    # is a small fraction of its norm, some below CENTRED_TOL. Judged row by row they were
    # dropped and biased sa_c_imbalance (0.0140 against 0.0117 at offset 300).
    gen = torch.Generator().manual_seed(0)
    x = 300.0 + torch.randn(1024, 64, generator=gen)
    v1 = torch.randn(64, generator=gen)
    stats = sa_statistics(x, v1)
    centred = x.double() - x.double().mean(dim=0)
    sa = centred @ (v1 / v1.norm()).double() / centred.norm(dim=1)
    assert stats["sa_c_abs_mean"].item() == pytest.approx(sa.abs().mean().item(), rel=1e-2)
    assert stats["sa_c_imbalance"].item() == pytest.approx(
        abs(2 * (sa > 0).double().mean().item() - 1), abs=1e-3
    )


def test_non_finite_inputs_propagate():
    rows = torch.randn(20, 8)
    rows[3, 2] = math.inf
    stats = sa_statistics(rows, torch.ones(8))
    assert stats["act_max"].item() == math.inf
    assert stats["act_norm_mean"].item() == math.inf

    rows[5, 1] = math.nan
    stats = sa_statistics(rows, torch.ones(8))
    for name in ("act_max", "act_norm_mean", "sa_pos", "sa_imbalance", "sa_mean", "sa_abs_mean"):
        assert math.isnan(stats[name].item()), name
    assert stats["sa_hist"].sum().item() == 18  # the two non-finite rows cannot be binned

    nan_v1 = sa_statistics(torch.randn(20, 8), torch.full((8,), math.nan))
    assert math.isnan(nan_v1["sa_mean"].item()) and nan_v1["sa_hist"].sum().item() == 0


def test_sample_then_statistics_on_activations_of_a_real_layer():
    torch.manual_seed(9)
    layer = torch.nn.Linear(32, 16)
    x = torch.randn(4, 50, 32)
    _, v1, _ = power_iteration(layer.weight)
    rows = sample_rows(x, 64, torch.Generator().manual_seed(0))
    stats = assert_matches_numpy(rows, v1)
    assert stats["sa_hist"].sum().item() == 64
