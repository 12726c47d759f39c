"""``weight_growth``: a layer's top singular value (or weight norm) grows too fast."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from alerts.predictors.base import Observation, Verdict, finite

PARAMS = {
    "stat": "sigma1",
    "window_checks": 5,
    "max_rate": 0.01,
    "warmup_steps": 100,
    "falling": False,
}
"""Holds when ``stat`` (``sigma1`` or ``weight_norm``) grew by more than ``max_rate`` per step
(compounded) over the last ``window_checks`` checks. A rate is scale-free, so one threshold
serves layers of any size. Steps before ``warmup_steps`` (fast growth from the initialisation)
are only remembered. ``falling = true`` judges how fast ``stat`` *falls* instead (for
``stable_rank``, whose collapse is the worry)."""


def per_step_rate(log_from: float, log_to: float, steps: int, falling: bool = False) -> float:
    """Compounded change per step between two logged values; the fall's rate when ``falling``.

    >>> round(per_step_rate(0.0, math.log(1.21), 2), 4), round(per_step_rate(0.0, math.log(0.81), 2, True), 4)
    (0.1, 0.1)
    """
    change = (log_to - log_from) / max(1, steps)
    return -math.expm1(change) if falling else math.expm1(change)


def weight_growth(obs: Observation, memory: dict, params: Mapping[str, Any]) -> list[Verdict]:
    """Per layer: compounded per-step growth rate of ``stat`` over a window of checks.

    >>> p = dict(PARAMS, window_checks=2, warmup_steps=0)
    >>> from storage.entities import LayerStat
    >>> m = {}
    >>> for step, s1 in [(0, 1.0), (10, 1.01), (20, 1.02), (30, 2.0)]:
    ...     v = weight_growth(Observation(step, layers={"fc": LayerStat(step, "fc", sigma1=s1)}), m, p)
    >>> v[0].holds, v[0].layer
    (True, 'fc')
    """
    verdicts = []
    window = int(params["window_checks"])
    for layer, stat in obs.layers.items():
        value = getattr(stat, params["stat"], None)
        if not finite(value) or value <= 0:
            continue
        history = memory.setdefault(layer, [])
        history.append([obs.step, math.log(value)])
        del history[: max(0, len(history) - window - 1)]
        if obs.step < params["warmup_steps"] or len(history) <= window:
            verdicts.append(Verdict(False, 0.0, layer=layer))
            continue
        (s0, x0), (s1, x1) = history[0], history[-1]
        rate = per_step_rate(x0, x1, s1 - s0, params["falling"])
        holds = rate > params["max_rate"]
        message = (
            f"{params['stat']} of {layer} {'falls' if params['falling'] else 'grows'} "
            f"{rate:.2%} per step "
            f"(×{math.exp(x1 - x0):.2f} over steps {s0}–{s1})"
            if holds
            else ""
        )
        verdicts.append(Verdict(holds, rate, message, layer=layer, details={params["stat"]: value}))
    return verdicts
