"""``non_finite``: NaN or ±Inf in the loss, the gradient norms or the weights."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from alerts.predictors.base import Observation, Verdict

PARAMS = {
    "scalar_keys": ["loss", "grad_norm"],
    "layer_keys": ["grad_norm", "weight_norm", "sigma1"],
}


def _bad(value: float | None) -> bool:
    return value is not None and not math.isfinite(value)


def non_finite(obs: Observation, memory: dict, params: Mapping[str, Any]) -> list[Verdict]:
    """Holds on any step whose watched scalars or layer statistics contain NaN or ±Inf.

    Steps with none of the watched values say nothing (no verdict).

    >>> non_finite(Observation(3, {"loss": float("nan")}), {}, PARAMS)[0].holds
    True
    >>> non_finite(Observation(3, {"loss": 2.0, "grad_norm": 1.0}), {}, PARAMS)[0].holds
    False
    """
    seen = False
    bad: list[str] = []
    for key in params["scalar_keys"]:
        if obs.scalars.get(key) is not None:
            seen = True
            if _bad(obs.scalars[key]):
                bad.append(f"{key}={obs.scalars[key]}")
    for layer, stat in obs.layers.items():
        for key in params["layer_keys"]:
            value = getattr(stat, key, None)
            if value is not None:
                seen = True
                if _bad(value):
                    bad.append(f"{layer}/{key}={value}")
    if not seen:
        return []
    if not bad:
        return [Verdict(False, 0.0)]
    shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    return [
        Verdict(
            True,
            float(len(bad)),
            f"non-finite values at step {obs.step}: {shown}",
            details={"non_finite": bad[:50]},
        )
    ]
