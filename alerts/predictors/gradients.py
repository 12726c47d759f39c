"""``grad_norm_spike``: the global gradient norm far above its EMA, in log space."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from alerts.predictors.base import Observation, Verdict, finite

PARAMS = {
    "key": "grad_norm",
    "alpha": 0.05,
    "z_threshold": 6.0,
    "min_ratio": 3.0,
    "min_sd": 0.05,
    "warmup_checks": 20,
}
"""Works on ``log(grad_norm)``: holds when its z-score against an exponentially weighted mean
and variance (weight ``alpha``) exceeds ``z_threshold`` *and* the norm is ``min_ratio`` times the
EMA level (the score is that z-score on such a spike, 0 otherwise). ``min_sd`` floors the
standard deviation (log units) so a flat series cannot make a tiny wiggle look huge. Spikes
enter the EMA clipped at the threshold, so one spike does not blind it while a lasting new
level is still absorbed. Persistence (``for_checks``, default 3) is what tells a lasting rise
from the isolated 100–1000× spikes of stable runs."""


def grad_norm_spike(obs: Observation, memory: dict, params: Mapping[str, Any]) -> list[Verdict]:
    """z-score of log gradient norm against its EMA; skips None, non-finite and zero norms.

    >>> m, p = {}, dict(PARAMS, warmup_checks=3)
    >>> [grad_norm_spike(Observation(s, {"grad_norm": g}), m, p)[0].holds
    ...  for s, g in enumerate([1.0, 1.1, 0.9, 1.0, 100.0])]
    [False, False, False, False, True]
    """
    value = obs.scalars.get(params["key"])
    if not finite(value) or value <= 0:
        return []
    x = math.log(value)
    alpha = float(params["alpha"])
    mean, var, n = memory.get("mean"), memory.get("var", 0.0), memory.get("n", 0)
    if mean is None:
        memory.update(mean=x, var=0.0, n=1)
        return [Verdict(False, 0.0)]
    sd = max(math.sqrt(var), float(params["min_sd"]))
    z = (x - mean) / sd
    judged = n >= params["warmup_checks"]
    spike = x - mean > math.log(params["min_ratio"])
    holds = judged and z > params["z_threshold"] and spike
    clipped = min(x, mean + params["z_threshold"] * sd)
    diff = clipped - mean
    incr = alpha * diff
    memory.update(mean=mean + incr, var=(1 - alpha) * (var + diff * incr), n=n + 1)
    if not judged:
        return [Verdict(False, 0.0)]
    ratio = math.exp(x - mean)
    message = (
        f"{params['key']} {value:.4g} is {ratio:.1f}× its EMA {math.exp(mean):.4g} (z={z:.1f})"
        if holds
        else ""
    )
    # the score is what z_threshold is compared with: z, but only for a spike of min_ratio (0
    # otherwise), so that `tripwire calibrate` learns the z that healthy *spikes* reached rather
    # than the near-zero z of a norm drifting down, which would let any 3x blip through
    score = z if spike else 0.0
    return [Verdict(holds, score, message, details={"ratio": ratio, "value": value, "z": z})]
