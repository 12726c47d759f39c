"""Run-level predictors that count layers changing together, each against its own history.

A single layer's statistic wanders in healthy training (near-edge runs show isolated 100–1000×
gradient spikes that never explode); a run about to explode moves many layers at once. Both
predictors here judge every layer against itself — a rate or a z-score, so scale-free — and
hold only when at least ``min_layers`` of the run's layers move together.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from alerts.predictors.base import Observation, Verdict, finite
from alerts.predictors.weights import per_step_rate

SIGMA_PARAMS = {
    "stat": "sigma1",
    "window_checks": 5,
    "max_rate": 0.01,
    "min_layers": 0.5,
    "warmup_steps": 100,
    "falling": False,
}
"""Defaults chosen on the prediction benchmark (docs/benchmarks.md, "Prediction"): the loosest
setting with no false alarm on its stable near-edge runs.

``sigma_surge``: a layer *surges* when ``stat`` grew by more than ``max_rate`` per step
(compounded) over its last ``window_checks`` checks; the condition holds when at least
``min_layers`` (a fraction of the layers seen at this check) surge at once. Steps before
``warmup_steps`` (growth from the initialisation) are only remembered. ``falling = true``
counts layers whose ``stat`` *falls* faster than ``max_rate`` (``stable_rank`` collapsing)."""

SHIFT_PARAMS = {
    "stat": "sa_abs_mean",
    "alpha": 0.1,
    "z_threshold": 4.0,
    "min_sd": 0.02,
    "min_layers": 0.3,
    "warmup_checks": 10,
}
"""``sa_shift``: each layer's ``stat`` (default ``mean |SA|``; also ``sa_imbalance``,
``v_drift``, ``act_max``) is compared with an exponentially weighted mean and standard deviation
of its own past checks (weight ``alpha``; ``min_sd`` floors the deviation); a layer *shifts*
when its z-score exceeds ``z_threshold``. Holds when at least ``min_layers`` of the layers shift
at once. Values that shifted enter the EMA clipped at the threshold, so a lasting change is
absorbed slowly and one outlier does not blind the baseline."""


def _fraction_verdict(
    name: str, obs: Observation, hits: list[str], seen: int, frac: float, what: str
) -> list[Verdict]:
    if not obs.layers:
        return []  # not a check step: nothing to judge
    if seen == 0:
        return [Verdict(False, 0.0)]
    score = len(hits) / seen
    holds = score >= frac
    message = (
        f"{len(hits)} of {seen} layers {what} at step {obs.step}: "
        + ", ".join(hits[:5])
        + (" …" if len(hits) > 5 else "")
        if holds
        else ""
    )
    return [Verdict(holds, score, message, details={"layers": hits[:20], "predictor": name})]


def sigma_surge(obs: Observation, memory: dict, params: Mapping[str, Any]) -> list[Verdict]:
    """Fraction of layers whose ``stat`` grows faster than ``max_rate`` per step.

    >>> from storage.entities import LayerStat
    >>> p, m = dict(SIGMA_PARAMS, window_checks=1, warmup_steps=0), {}
    >>> def obs(step, a, b):
    ...     return Observation(step, layers={"a": LayerStat(step, "a", sigma1=a),
    ...                                      "b": LayerStat(step, "b", sigma1=b)})
    >>> [sigma_surge(obs(s, a, b), m, p)[0].holds for s, a, b in [(0, 1, 1), (10, 1.01, 1.0),
    ...                                                            (20, 1.5, 1.5)]]
    [False, False, True]
    """
    window = int(params["window_checks"])
    hits, seen = [], 0
    for layer, stat in obs.layers.items():
        value = getattr(stat, params["stat"], None)
        if not finite(value) or value <= 0:
            continue
        history = memory.setdefault(layer, [])
        history.append([obs.step, math.log(value)])
        del history[: max(0, len(history) - window - 1)]
        if obs.step < params["warmup_steps"] or len(history) <= window:
            continue
        seen += 1
        (s0, x0), (s1, x1) = history[0], history[-1]
        if per_step_rate(x0, x1, s1 - s0, params["falling"]) > params["max_rate"]:
            hits.append(layer)
    return _fraction_verdict(
        "sigma_surge",
        obs,
        hits,
        seen,
        params["min_layers"],
        f"{'lose' if params['falling'] else 'grow'} {params['stat']} faster than "
        f"{params['max_rate']:.2%}/step",
    )


def sa_shift(obs: Observation, memory: dict, params: Mapping[str, Any]) -> list[Verdict]:
    """Fraction of layers whose ``stat`` jumped more than ``z_threshold`` deviations above its EMA.

    >>> from storage.entities import LayerStat
    >>> p, m = dict(SHIFT_PARAMS, warmup_checks=3, min_layers=1.0), {}
    >>> vals = [0.30, 0.31, 0.29, 0.30, 0.31, 0.80]
    >>> [sa_shift(Observation(s, layers={"a": LayerStat(s, "a", sa_abs_mean=v)}), m, p)[0].holds
    ...  for s, v in enumerate(vals)][-1]
    True
    """
    alpha, thr = float(params["alpha"]), float(params["z_threshold"])
    hits, seen = [], 0
    for layer, stat in obs.layers.items():
        value = getattr(stat, params["stat"], None)
        if not finite(value):
            continue
        mem = memory.setdefault(layer, {"n": 0, "mean": value, "var": 0.0})
        sd = max(math.sqrt(mem["var"]), float(params["min_sd"]))
        z = (value - mem["mean"]) / sd
        if mem["n"] >= params["warmup_checks"]:
            seen += 1
            if z > thr:
                hits.append(layer)
        diff = min(value, mem["mean"] + thr * sd) - mem["mean"]
        mem["mean"] += alpha * diff
        mem["var"] = (1 - alpha) * (mem["var"] + diff * alpha * diff)
        mem["n"] += 1
    return _fraction_verdict(
        "sa_shift",
        obs,
        hits,
        seen,
        params["min_layers"],
        f"shifted {params['stat']} above their own history",
    )


UPDATE_PARAMS = {"max_ratio": 0.01, "min_layers": 0.5, "warmup_steps": 100}
"""``update_size``: a layer's ``update_ratio`` (relative weight change per step, measured by
the collector over each check interval) above ``max_ratio``; holds when at least
``min_layers`` of the layers are. The rule of thumb says healthy updates are ~1e-3 of the
weights; on the prediction benchmark healthy small GPTs under AdamW run at 1–4e-2, so the level
is a per-model matter (``tripwire calibrate``) and the rule ships off."""


def update_size(obs: Observation, memory: dict, params: Mapping[str, Any]) -> list[Verdict]:
    """Fraction of layers whose update-to-weight ratio per step exceeds ``max_ratio``.

    >>> from storage.entities import LayerStat
    >>> p = dict(UPDATE_PARAMS, warmup_steps=0)
    >>> layers = {"a": LayerStat(10, "a", update_ratio=0.02), "b": LayerStat(10, "b", update_ratio=0.001)}
    >>> update_size(Observation(10, layers=layers), {}, p)[0].holds
    True
    """
    if obs.step < params["warmup_steps"]:
        return [Verdict(False, 0.0)] if obs.layers else []
    values = {n: s.update_ratio for n, s in obs.layers.items() if finite(s.update_ratio)}
    hits = [n for n, v in values.items() if v > params["max_ratio"]]
    return _fraction_verdict(
        "update_size",
        obs,
        hits,
        len(values),
        params["min_layers"],
        f"move more than {params['max_ratio']:g} of their weights per step",
    )


DIVERGING_PARAMS = {
    **SIGMA_PARAMS,
    "window_checks": 3,
    "max_rate": 0.01,
    "min_layers": 0.5,
    "loss_alpha": 0.05,
    "min_loss_rise": 0.1,
}
"""``diverging``: ``sigma_surge`` *and* the loss no longer improving — its EMA (weight
``loss_alpha``) at least ``min_loss_rise`` nats above the lowest EMA so far. Weights grow fast
in healthy runs too while the learning rate rises; growth while the loss climbs is what
precedes the explosions of the benchmark. σ1 above 1 %/step over 3 checks in at least half of
the layers while the loss EMA is 0.1 nat up: the quietest setting of the benchmark's sweep (in
10 % of the layers at 0.2 nat it warns earlier on the SGD MLPs, whose output layer alone grows
first, and rings on a stable run that collapsed its attention)."""


def diverging(obs: Observation, memory: dict, params: Mapping[str, Any]) -> list[Verdict]:
    """Fraction of layers surging, gated on the smoothed loss rising above its minimum.

    >>> from storage.entities import LayerStat
    >>> p, m = dict(DIVERGING_PARAMS, window_checks=1, warmup_steps=0, loss_alpha=1.0), {}
    >>> def obs(step, s1, loss):
    ...     return Observation(step, {"loss": loss}, {"a": LayerStat(step, "a", sigma1=s1)})
    >>> [diverging(obs(s, a, x), m, p)[0].holds for s, a, x in [(0, 1, 2.0), (10, 1.5, 1.9),
    ...                                                           (20, 2.5, 2.3)]]
    [False, False, True]
    """
    loss = obs.scalars.get("loss")
    rise = memory.setdefault("loss", {})
    if finite(loss):
        ema = (
            loss if "ema" not in rise else rise["ema"] + params["loss_alpha"] * (loss - rise["ema"])
        )
        rise["ema"], rise["min"] = ema, min(rise.get("min", ema), ema)
    verdicts = sigma_surge(obs, memory.setdefault("sigma", {}), params)
    if not verdicts:
        return verdicts
    climbed = rise.get("ema", 0.0) - rise.get("min", 0.0)
    v = verdicts[0]
    holds = v.holds and climbed >= params["min_loss_rise"]
    message = f"{v.message}; smoothed loss {climbed:.2f} nats above its minimum" if holds else ""
    return [Verdict(holds, v.score if holds else 0.0, message, details=v.details)]


RANK_PARAMS = {
    **DIVERGING_PARAMS,
    "stat": "stable_rank",
    "falling": True,
    "max_rate": 0.005,
    "min_layers": 0.5,
    "min_loss_rise": 0.2,
}
"""``rank_collapse``: ``diverging`` on the *fall* of each layer's stable rank
(‖W‖_F² / σ1²: how many directions carry the weight) instead of σ1's growth: the stable rank
falls by more than 0.5 %/step over 3 checks in at least half of the layers while the loss EMA is
≥ 0.2 nat above its minimum. Stable ranks fall in healthy training too (the spectrum sharpens
as a model learns); falling in many layers at once while the loss climbs preceded half of the
benchmark's explosions, and it was silent on all its stable runs (docs/benchmarks.md)."""
