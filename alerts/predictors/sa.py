"""``sa_collapse``: a layer's spectral-alignment signs collapse, relative to its own normal."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from alerts.predictors.base import Observation, Verdict, finite
from alerts.predictors.weights import weight_growth

PARAMS = {
    "stat": "sa_imbalance",
    "warmup_steps": 50,
    "baseline_checks": 5,
    "alpha": 0.02,
    "min_imbalance": 0.6,
    "excess": 0.5,
    "min_headroom": 0.1,
}
"""The imbalance ``D = |2 p+ - 1|`` (0: mixed signs, 1: one sign) is judged against the layer's
own baseline, the mean of its first ``baseline_checks`` checks after ``warmup_steps``, then an
EMA (weight ``alpha``) updated only while the condition does not hold. It holds when D has
used up at least ``excess`` of the headroom ``1 - baseline`` *and* ``D >= min_imbalance``.
A layer whose baseline leaves less than ``min_headroom`` (inputs that are one-signed by
construction, e.g. after GELU or LayerNorm) cannot collapse further and is never flagged.
``stat = "sa_c_imbalance"`` judges D of the inputs centred per batch instead."""


def _imbalance(stat, name: str) -> float | None:  # noqa: ANN001
    value = getattr(stat, name, None)
    if finite(value):
        return value
    if name == "sa_imbalance" and finite(stat.sa_pos):
        return abs(2 * stat.sa_pos - 1)
    return None


def sa_collapse(obs: Observation, memory: dict, params: Mapping[str, Any]) -> list[Verdict]:
    """Per layer: has the SA imbalance risen far above that layer's baseline?

    >>> from storage.entities import LayerStat
    >>> p, m = dict(PARAMS, warmup_steps=0, baseline_checks=2), {}
    >>> for step, d in [(0, 0.1), (10, 0.1), (20, 0.12), (30, 0.9)]:
    ...     v = sa_collapse(Observation(step, layers={"fc": LayerStat(step, "fc", sa_imbalance=d)}), m, p)
    >>> v[0].holds
    True
    """
    verdicts = []
    if obs.step < params["warmup_steps"]:
        return verdicts
    for layer, stat in obs.layers.items():
        d = _imbalance(stat, params["stat"])
        if d is None:
            continue
        mem = memory.setdefault(layer, {"n": 0, "base": 0.0})
        if mem["n"] < params["baseline_checks"]:
            mem["n"] += 1
            mem["base"] += (d - mem["base"]) / mem["n"]
            verdicts.append(Verdict(False, 0.0, layer=layer))
            continue
        base = mem["base"]
        headroom = 1.0 - base
        if headroom < params["min_headroom"]:
            verdicts.append(Verdict(False, 0.0, layer=layer, details={"baseline": base}))
            continue
        score = (d - base) / headroom
        holds = score >= params["excess"] and d >= params["min_imbalance"]
        if not holds:
            mem["base"] = base + params["alpha"] * (d - base)
        message = (
            f"SA signs of {layer} collapsed: imbalance {d:.2f} against its normal {base:.2f}"
            if holds
            else ""
        )
        verdicts.append(
            Verdict(holds, score, message, layer=layer, details={"imbalance": d, "baseline": base})
        )
    return verdicts


GROWTH_PARAMS = {
    **PARAMS,
    "growth_stat": "sigma1",
    "growth_falling": False,
    "window_checks": 5,
    "max_rate": 0.005,
}
"""``sa_growth``: ``sa_collapse``'s parameters, plus ``weight_growth``'s on ``growth_stat``
(its warm-up is ``warmup_steps``; ``growth_falling`` is its ``falling``, e.g. for
``growth_stat = "stable_rank"``): both must hold for the same layer at once."""


def sa_growth(obs: Observation, memory: dict, params: Mapping[str, Any]) -> list[Verdict]:
    """Per layer: the SA signs collapse *and* σ1 grows faster than ``max_rate`` per step.

    >>> from storage.entities import LayerStat
    >>> p, m = dict(GROWTH_PARAMS, warmup_steps=0, baseline_checks=2, window_checks=1), {}
    >>> for step, d, s1 in [(0, 0.1, 1.0), (10, 0.1, 1.0), (20, 0.9, 1.0), (30, 0.9, 1.5)]:
    ...     v = sa_growth(Observation(step, layers={"fc": LayerStat(step, "fc", sa_imbalance=d,
    ...                                                             sigma1=s1)}), m, p)
    ...     print(step, v[0].holds)
    0 False
    10 False
    20 False
    30 True
    """
    growth_params = {
        "stat": params["growth_stat"],
        "falling": params["growth_falling"],
        "window_checks": params["window_checks"],
        "max_rate": params["max_rate"],
        "warmup_steps": params["warmup_steps"],
    }
    growing = {
        v.layer: v for v in weight_growth(obs, memory.setdefault("growth", {}), growth_params)
    }
    verdicts = []
    for v in sa_collapse(obs, memory.setdefault("sa", {}), params):
        grows = growing.get(v.layer)
        holds = v.holds and grows is not None and grows.holds
        message = f"{v.message}; {grows.message}" if holds else ""
        verdicts.append(Verdict(holds, v.score if holds else 0.0, message, layer=v.layer))
    return verdicts
