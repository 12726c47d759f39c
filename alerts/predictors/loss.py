"""``loss_spike``: the smoothed loss rises well above its running minimum; ``loss_exploded``:
the loss has exploded and stays up."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Any

from alerts.predictors.base import Observation, Verdict, finite

PARAMS = {
    "key": "loss",
    "alpha": 0.1,
    "rel_increase": 0.25,
    "min_increase": 0.0,
    "warmup_steps": 20,
}
"""``alpha``: EMA weight of a new loss. Holds when ``ema - min(ema)`` exceeds both
``rel_increase × |min(ema)|`` and ``min_increase``, after ``warmup_steps`` evaluated steps."""


def loss_spike(obs: Observation, memory: dict, params: Mapping[str, Any]) -> list[Verdict]:
    """Compare the EMA of the loss with the lowest EMA seen so far; non-finite losses are skipped.

    >>> p = dict(PARAMS, warmup_steps=2, alpha=1.0)
    >>> m = {}
    >>> [loss_spike(Observation(s, {"loss": v}), m, p)[0].holds for s, v in enumerate([3, 2, 2, 4])]
    [False, False, False, True]
    """
    value = obs.scalars.get(params["key"])
    if not finite(value):
        return []
    alpha = float(params["alpha"])
    ema = memory.get("ema")
    ema = value if ema is None else ema + alpha * (value - ema)
    low = min(memory.get("min", ema), ema)
    n = memory.get("n", 0) + 1
    memory.update(ema=ema, min=low, n=n)
    if n <= params["warmup_steps"]:
        return [Verdict(False, 0.0)]
    rise = ema - low
    scale = abs(low) if low != 0 else 1.0
    score = rise / scale
    holds = rise > params["min_increase"] and score > params["rel_increase"]
    message = (
        f"smoothed {params['key']} {ema:.4g} is {score:.0%} above its minimum {low:.4g}"
        if holds
        else ""
    )
    return [Verdict(holds, score, message, details={"ema": ema, "min": low})]


EXPLODED_PARAMS = {"key": "loss", "margin": 1.0, "window": 20}
"""Holds when the median of the last ``window`` losses (non-finite ones count as +Inf) is more
than ``margin`` above the lowest loss before them: the benchmark's explosion, seen as it
happens (``window // 2`` steps or so after it starts), while a lone spike stays quiet. The
lowest single loss sits about 3.3 noise deviations under the typical one after a thousand
steps, so a loss noisier than ~0.25 nat per step needs a larger ``margin``."""


def loss_exploded(obs: Observation, memory: dict, params: Mapping[str, Any]) -> list[Verdict]:
    """Median of the recent losses against the best loss before them.

    >>> p = dict(EXPLODED_PARAMS, window=3)
    >>> m = {}
    >>> [loss_exploded(Observation(s, {"loss": v}), m, p)[0].holds
    ...  for s, v in enumerate([3, 2, 2, 9, 2, 2, 5, 6, float("nan")])]
    [False, False, False, False, False, False, False, True, True]
    """
    value = obs.scalars.get(params["key"])
    if value is None:
        return []
    recent = memory.setdefault("recent", [])
    recent.append(value if finite(value) else math.inf)
    window = int(params["window"])
    if len(recent) > window:
        left = recent.pop(0)
        if math.isfinite(left):
            memory["best"] = min(memory.get("best", left), left)
    best = memory.get("best")
    if best is None or len(recent) < window:
        return [Verdict(False, 0.0)]
    median = statistics.median(recent)
    rise = median - best
    holds = rise > params["margin"]
    if not holds:
        message = ""
    elif math.isfinite(median):
        message = (
            f"{params['key']} exploded: the median of its last {window} values, {median:.4g}, is"
            f" {rise:.3g} above its best before them, {best:.4g}"
        )
    else:
        bad = sum(not math.isfinite(v) for v in recent)
        message = (
            f"{params['key']} exploded: {bad} of its last {window} values are NaN or ±Inf"
            f" (its best before them, {best:.4g})"
        )
    return [Verdict(holds, rise, message, details={"best": best})]
