"""Predictors against literal series, NaN, Inf, flat, noisy and one-signed layers included."""

from __future__ import annotations

import math
import random

import pytest

from alerts.predictors import PREDICTORS, Observation, UnknownPredictor, get_predictor
from storage.entities import LayerStat

NAN, INF = float("nan"), float("inf")


def run_scalar(name: str, values, params=None, key=None):
    spec = PREDICTORS[name]
    params = {**spec.params, **(params or {})}
    key = key or params.get("key", "loss")
    memory: dict = {}
    out = []
    for step, value in enumerate(values):
        verdicts = spec.fn(Observation(step, {key: value}), memory, params)
        out.append(verdicts[0].holds if verdicts else None)
    return out, memory


def run_layers(name: str, rows, params=None):
    """rows: list of (step, {layer: {stat: value}}); returns per-step {layer: holds}."""
    spec = PREDICTORS[name]
    params = {**spec.params, **(params or {})}
    memory: dict = {}
    out = []
    for step, by_layer in rows:
        layers = {n: LayerStat(step, n, **v) for n, v in by_layer.items()}
        verdicts = spec.fn(Observation(step, {}, layers), memory, params)
        out.append({v.layer: v.holds for v in verdicts})
    return out, memory


def test_registry_lists_valid_names_on_unknown():
    with pytest.raises(UnknownPredictor) as err:
        get_predictor("nope")
    valid = str(err.value).split("valid: ")[1].split(", ")
    assert valid == sorted(PREDICTORS)
    assert {"sa_collapse", "grad_norm_spike", "weight_growth", "loss_spike"} <= set(valid)
    assert {"non_finite", "stalled"} <= set(valid)


def test_every_predictor_has_defaults_and_known_severity():
    for spec in PREDICTORS.values():
        assert spec.severity in ("info", "warning", "critical")
        assert spec.for_checks >= 1
        assert isinstance(dict(spec.params), dict)


# -- non_finite --------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_non_finite_holds_on_nan_and_inf_loss(bad):
    holds, _ = run_scalar("non_finite", [2.0, bad, 2.0])
    assert holds == [False, True, False]


def test_non_finite_checks_layer_statistics_and_skips_missing_values():
    out, _ = run_layers(
        "non_finite",
        [(0, {"fc": {"weight_norm": 1.0}}), (10, {"fc": {"sigma1": INF}}), (20, {"fc": {}})],
    )
    assert out == [{None: False}, {None: True}, {}]


def test_non_finite_leaves_gradients_alone_unless_asked():
    spec = PREDICTORS["non_finite"]
    overflow = Observation(
        4, {"loss": 2.0, "grad_norm": INF}, {"fc": LayerStat(4, "fc", grad_norm=NAN)}
    )
    assert [v.holds for v in spec.fn(overflow, {}, spec.params)] == [False]
    watched = {"scalar_keys": ["loss", "grad_norm"], "layer_keys": ["grad_norm"]}
    assert "fc/grad_norm=nan" in spec.fn(overflow, {}, watched)[0].message


def test_non_finite_is_cleared_only_by_what_was_non_finite_measured_again():
    spec = PREDICTORS["non_finite"]
    memory: dict = {}

    def judge(step, loss, weight_norm=None):
        layers = (
            {} if weight_norm is None else {"fc": LayerStat(step, "fc", weight_norm=weight_norm)}
        )
        return [
            v.holds for v in spec.fn(Observation(step, {"loss": loss}, layers), memory, spec.params)
        ]

    assert judge(10, 2.0, INF) == [True]
    assert judge(11, 2.0) == []  # a finite loss says nothing of the weights
    assert judge(20, 2.0, 5.0) == [False]
    assert judge(21, NAN) == [True]
    assert judge(22, 2.0) == [False]  # the loss was what went non-finite


def test_non_finite_says_nothing_without_watched_values():
    spec = PREDICTORS["non_finite"]
    assert spec.fn(Observation(1, {"lr": NAN}), {}, spec.params) == []


# -- loss_spike ---------------------------------------------------------------------------------


def test_loss_spike_flat_and_decreasing_losses_never_hold():
    flat, _ = run_scalar("loss_spike", [2.0] * 200)
    falling, _ = run_scalar("loss_spike", [5.0 * math.exp(-s / 50) + 1 for s in range(200)])
    assert not any(flat) and not any(falling)


def test_loss_spike_holds_when_the_loss_climbs_and_ignores_nan():
    values = [3.0 - s * 0.01 for s in range(100)] + [NAN, INF] + [6.0] * 20
    holds, memory = run_scalar("loss_spike", values)
    assert not any(h for h in holds[:100])
    assert holds[100] is None and holds[101] is None  # non-finite: no verdict
    assert holds[-1] is True
    assert math.isfinite(memory["ema"])


def test_loss_spike_negative_losses():
    holds, _ = run_scalar("loss_spike", [-2.0] * 50 + [-0.5] * 30)
    assert holds[-1] is True and not any(holds[:50])


# -- loss_exploded ------------------------------------------------------------------------------


def test_loss_exploded_fires_as_the_benchmark_defines_an_explosion():
    from tripwire.demo_training import explosion_step

    noisy = random.Random(0)
    healthy = [5.0 * math.exp(-s / 40) + 2 + noisy.uniform(-0.3, 0.3) for s in range(150)]
    spikes = list(healthy)
    for s in (60, 61, 90, 120):  # lone spikes that recover, as near-edge runs show
        spikes[s] += 8.0
    blowup = healthy + [9.0 + noisy.uniform(-1, 1) for _ in range(40)]
    quiet_healthy, _ = run_scalar("loss_exploded", healthy)
    quiet_spikes, _ = run_scalar("loss_exploded", spikes)
    fired, _ = run_scalar("loss_exploded", blowup)
    assert explosion_step(healthy) is None and explosion_step(spikes) is None
    assert not any(quiet_healthy) and not any(quiet_spikes)
    first = fired.index(True)
    assert explosion_step(blowup) == 150 and 150 < first <= 150 + 20
    assert all(fired[first:])  # and it stays firing while the loss stays up


@pytest.mark.parametrize(("noise", "margin"), [(0.2, 1.0), (0.4, 2.0)])
def test_loss_exploded_on_a_noisy_plateau_and_off_it(noise, margin):
    """Quiet on a plateau of per-step noise ``noise`` at ``margin`` (the documented rule: a
    loss noisier than ~0.25 nat needs a larger margin), and fires once the loss leaves it."""
    noisy = random.Random(1)
    plateau = [2.0 + noisy.gauss(0, noise) for _ in range(1500)]
    jump = [2.0 + 2 * margin + noisy.gauss(0, noise) for _ in range(40)]
    quiet, _ = run_scalar("loss_exploded", plateau, {"margin": margin})
    fired, _ = run_scalar("loss_exploded", plateau + jump, {"margin": margin})
    too_tight, _ = run_scalar("loss_exploded", plateau, {"margin": margin / 2})
    assert not any(quiet) and any(too_tight)
    assert 1500 < fired.index(True) <= 1520


def test_loss_exploded_counts_non_finite_losses_as_high_and_survives_json():
    import json

    holds, memory = run_scalar("loss_exploded", [2.0] * 40 + [NAN] * 15)
    assert holds[-1] is True and not any(holds[:40])
    assert json.loads(json.dumps(memory)) == memory  # the service stores memory as JSON
    spec = PREDICTORS["loss_exploded"]
    (verdict,) = spec.fn(Observation(55, {"loss": NAN}), memory, spec.params)
    assert (
        verdict.message
        == "loss exploded: 16 of its last 20 values are NaN or ±Inf (its best before them, 2)"
    )


# -- grad_norm_spike ----------------------------------------------------------------------------


def test_grad_spike_noisy_stable_series_stays_quiet():
    rng = random.Random(0)
    values = [math.exp(rng.gauss(0, 0.3)) for _ in range(2000)]
    holds, _ = run_scalar("grad_norm_spike", values, key="grad_norm")
    assert sum(bool(h) for h in holds) == 0


def test_grad_spike_flat_series_is_not_divided_by_zero():
    holds, memory = run_scalar("grad_norm_spike", [1.0] * 100 + [1.2], key="grad_norm")
    assert not any(holds)
    holds, _ = run_scalar("grad_norm_spike", [1.0] * 100 + [100.0], key="grad_norm")
    assert holds[-1] is True


def test_grad_spike_isolated_spike_holds_once_and_ema_is_not_blinded():
    values = [1.0] * 50 + [500.0] + [1.0] * 20 + [500.0, 500.0, 500.0]
    holds, memory = run_scalar("grad_norm_spike", values, key="grad_norm")
    assert holds[50] is True and not any(holds[51:71])
    assert holds[71:] == [True, True, True]
    assert math.exp(memory["mean"]) < 10  # clipped updates: the level did not jump to 500


def test_grad_spike_skips_nan_inf_zero_and_none():
    values = [1.0] * 30 + [NAN, INF, 0.0, None, 1.0]
    holds, memory = run_scalar("grad_norm_spike", values, key="grad_norm")
    assert holds[30:34] == [None, None, None, None]
    assert holds[34] is False and math.isfinite(memory["mean"])


# -- weight_growth --------------------------------------------------------------------------------


def test_weight_growth_slow_growth_is_fine_fast_growth_holds():
    slow = [(s, {"fc": {"sigma1": 1.0 + s * 1e-4}}) for s in range(0, 1000, 10)]
    out, _ = run_layers("weight_growth", slow)
    assert not any(v["fc"] for v in out)
    fast = slow + [(1000 + s, {"fc": {"sigma1": 1.1 * 1.05**s}}) for s in range(0, 100, 10)]
    out, _ = run_layers("weight_growth", fast)
    assert out[-1]["fc"] is True


def test_weight_growth_ignores_non_finite_and_uses_weight_norm_if_asked():
    rows = [(s, {"fc": {"sigma1": INF, "weight_norm": 1.0 * 1.1**s}}) for s in range(0, 300, 10)]
    out, _ = run_layers("weight_growth", rows)
    assert all(v == {} for v in out)
    out, _ = run_layers("weight_growth", rows, {"stat": "weight_norm"})
    assert out[-1]["fc"] is True


# -- sa_collapse ----------------------------------------------------------------------------------


def test_sa_collapse_one_signed_layer_never_cries_wolf():
    """Inputs after GELU/LayerNorm: D ≈ 1 from the start, which is normal for that layer."""
    rng = random.Random(1)
    rows = [
        (s, {"gelu_in": {"sa_imbalance": min(1.0, 0.97 + rng.uniform(-0.02, 0.03))}})
        for s in range(0, 2000, 10)
    ]
    out, _ = run_layers("sa_collapse", rows)
    assert not any(v.get("gelu_in") for v in out)


def test_sa_collapse_fires_per_layer_relative_to_its_own_normal():
    rng = random.Random(2)
    rows = []
    for s in range(0, 1000, 10):
        mixed = 0.1 + rng.uniform(-0.05, 0.05)
        collapsing = mixed if s < 800 else min(1.0, 0.1 + (s - 800) * 0.01)
        rows.append(
            (
                s,
                {
                    "attn": {"sa_imbalance": collapsing},
                    "mlp": {"sa_imbalance": mixed},
                    "post_ln": {"sa_pos": 0.985},  # D from p+ when the imbalance is missing
                },
            )
        )
    out, memory = run_layers("sa_collapse", rows)
    first = next(i for i, v in enumerate(out) if v.get("attn"))
    assert rows[first][0] >= 850
    assert not any(v.get("mlp") for v in out)
    assert not any(v.get("post_ln") for v in out)
    assert memory["attn"]["base"] < 0.2


def test_sa_collapse_skips_nan_and_warmup():
    rows = [(s, {"fc": {"sa_imbalance": NAN if s % 20 else 0.95}}) for s in range(0, 40, 10)]
    out, memory = run_layers("sa_collapse", rows)
    assert out == [{}, {}, {}, {}]  # all inside the default warm-up
    assert memory == {}


def test_sa_collapse_can_judge_the_centred_inputs_instead():
    rows = [
        (s, {"fc": {"sa_imbalance": 0.1, "sa_c_imbalance": 0.1 if s < 500 else 0.95}})
        for s in range(0, 700, 10)
    ]
    plain, _ = run_layers("sa_collapse", rows)
    centred, _ = run_layers("sa_collapse", rows, {"stat": "sa_c_imbalance"})
    assert not any(v.get("fc") for v in plain)
    assert rows[next(i for i, v in enumerate(centred) if v.get("fc"))][0] == 500


def test_attention_logits_level_alone_holds_above_it_and_skips_what_was_not_logged():
    level = {"min_growth": 0.0}
    out, _ = run_scalar("attention_logits", [12.0, 49.9, None, NAN, 50.1, 4000.0], level)
    assert out == [False, False, None, None, True, True]
    out, _ = run_scalar("attention_logits", [30.0], {**level, "max_logit": 25.0})
    assert out == [True]


def test_attention_logits_needs_the_level_and_a_runaway():
    growth = {"growth_steps": 5}  # the default tenfold, at one logged value per step
    slow = [20.0 * 1.3**i for i in range(20)]  # ×3.7 per 5 steps, to 3800: a level, no runaway
    out, _ = run_scalar("attention_logits", slow, growth)
    assert not any(out)
    assert any(run_scalar("attention_logits", slow, {"min_growth": 0.0})[0])  # the level rings
    fast = [2.0 * 1.6**i for i in range(15)]  # ×10.5 per 5 steps
    out, _ = run_scalar("attention_logits", fast, growth)
    assert out.index(True) == 7  # the first value above 50 (54), ×10.5 its value at step 2
    assert all(out[7:])
    levels_off = fast[:9] + [fast[8]] * 6 + [40.0, 60.0]  # stops growing; falls under 50; back
    out, _ = run_scalar("attention_logits", levels_off, growth)
    assert out[7:] == [True] * 8 + [False, False]  # held while above 50, not re-armed by a level
    out, _ = run_scalar("attention_logits", [5.0, 6.0, NAN, None, 8.0, 600.0], growth)
    assert out == [False, False, None, None, False, True]  # 5 steps after the first value
    out, _ = run_scalar("attention_logits", [5.0, 6.0, 7.0, 600.0], growth)
    assert out == [False, False, False, False]  # no value 5 steps back yet


def test_log_z_drift_compares_with_the_level_it_settled_at():
    values = [9.0] * 100 + [5.0] * 100 + [7.0] * 50 + [-1.0] * 10  # warm-up, baseline, drift
    out, memory = run_scalar("log_z_drift", values)
    assert not any(out[:250])
    assert all(out[250:])
    assert memory["sum"] / memory["n"] == 5.0  # warm-up values are not the baseline
    out, _ = run_scalar("log_z_drift", [5.0] * 200 + [9.9, NAN, 10.1], {"max_drift": 5.0})
    assert out[-3:] == [False, None, True]


def test_update_size_counts_layers_moving_too_fast():
    spec = PREDICTORS["update_size"]

    def holds(ratios, **params):
        layers = {f"l{i}": LayerStat(200, f"l{i}", update_ratio=r) for i, r in enumerate(ratios)}
        verdicts = spec.fn(Observation(200, {}, layers), {}, {**spec.params, **params})
        return verdicts[0].holds

    assert holds([0.02, 0.02, 0.001, NAN])  # 2 of the 3 measured layers
    assert not holds([0.02, 0.001, 0.001, None])
    assert holds([0.02, 0.001, 0.001], min_layers=0.3)
    assert not holds([0.02, 0.02, 0.02], max_ratio=0.05)


def test_sa_growth_needs_the_collapse_and_the_growth_in_the_same_layer():
    def rows(collapse_at, grow_at):
        out = []
        for s in range(0, 700, 10):
            out.append(
                (
                    s,
                    {
                        "fc": {
                            "sa_imbalance": 0.95 if s >= collapse_at else 0.1,
                            "sigma1": 1.0 * (1.02 ** max(0, s - grow_at)),
                        }
                    },
                )
            )
        return out

    def first(collapse_at, grow_at):
        out, _ = run_layers("sa_growth", rows(collapse_at, grow_at))
        return next((rows(0, 0)[i][0] for i, v in enumerate(out) if v.get("fc")), None)

    assert first(collapse_at=300, grow_at=10_000) is None  # SA alone
    assert first(collapse_at=10_000, grow_at=300) is None  # growth alone
    assert first(collapse_at=400, grow_at=300) == 400


# -- stable rank falling ---------------------------------------------------------------------------


def test_weight_growth_can_judge_a_falling_stable_rank():
    rows = [(s, {"fc": {"stable_rank": 20.0 * 0.98 ** (s / 10)}}) for s in range(0, 400, 10)]
    out, _ = run_layers("weight_growth", rows, {"stat": "stable_rank"})
    assert not any(v["fc"] for v in out)  # a fall is not growth
    out, _ = run_layers(
        "weight_growth", rows, {"stat": "stable_rank", "falling": True, "max_rate": 0.001}
    )
    assert out[-1]["fc"] is True  # 0.2 %/step down
    out, _ = run_layers("weight_growth", rows, {"stat": "stable_rank", "falling": True})
    assert not any(v["fc"] for v in out)  # slower than the default 1 %/step


def rank_collapse_first(fall_from: int, loss_up_from: int, falling_layers: int = 4):
    """First step ``rank_collapse`` holds: four layers, ``falling_layers`` of them losing 2 % of
    their stable rank per step from ``fall_from``; the loss falls, then climbs from ``loss_up_from``."""
    spec = PREDICTORS["rank_collapse"]
    memory: dict = {}
    for s in range(0, 600, 10):
        loss = (
            3.0 - 0.002 * s
            if s < loss_up_from
            else 3.0 - 0.002 * loss_up_from + 0.02 * (s - loss_up_from)
        )
        rank = 10.0 * 0.98 ** max(0, s - fall_from)
        layers = {
            f"l{i}": LayerStat(s, f"l{i}", stable_rank=rank if i < falling_layers else 10.0)
            for i in range(4)
        }
        if spec.fn(Observation(s, {"loss": loss}, layers), memory, spec.params)[0].holds:
            return s
    return None


def test_rank_collapse_needs_the_ranks_falling_together_while_the_loss_climbs():
    assert rank_collapse_first(fall_from=300, loss_up_from=10_000) is None  # ranks alone
    assert rank_collapse_first(fall_from=10_000, loss_up_from=300) is None  # loss alone
    assert rank_collapse_first(fall_from=300, loss_up_from=300, falling_layers=1) is None
    first = rank_collapse_first(fall_from=300, loss_up_from=300, falling_layers=2)
    assert first is not None and 300 < first < 450
