"""``non_finite``: NaN or ±Inf in the loss, the gradient norms or the weights."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from alerts.predictors.base import Observation, Verdict
from storage.entities import listed

PARAMS = {
    "scalar_keys": ["loss"],
    "layer_keys": ["weight_norm", "sigma1"],
}
"""Gradients are not watched by default: under fp16 loss scaling a non-finite gradient is routine
(``GradScaler`` skips that step), and one that does reach the weights shows in the next step's
loss. Add ``grad_norm`` to either list to watch them."""

LAYERS = "layers"
"""What ``memory["bad"]`` calls the layer statistics, beside the scalar keys."""


def _bad(value: float | None) -> bool:
    return value is not None and not math.isfinite(value)


def non_finite(obs: Observation, memory: dict, params: Mapping[str, Any]) -> list[Verdict]:
    """Holds on any step whose watched scalars or layer statistics contain NaN or ±Inf.

    Steps with none of the watched values say nothing (no verdict), and so do steps that cannot
    see what was non-finite last: weights that went non-finite are only cleared by a check step
    that measures them again, not by the finite losses of the steps in between.

    >>> non_finite(Observation(3, {"loss": float("nan")}), {}, PARAMS)[0].holds
    True
    >>> non_finite(Observation(3, {"loss": 2.0}), {}, PARAMS)[0].holds
    False
    """
    seen: set[str] = set()
    bad: list[str] = []
    bad_sources: set[str] = set()
    for key in params["scalar_keys"]:
        if obs.scalars.get(key) is not None:
            seen.add(key)
            if _bad(obs.scalars[key]):
                bad.append(f"{key}={obs.scalars[key]}")
                bad_sources.add(key)
    for layer, stat in obs.layers.items():
        for key in params["layer_keys"]:
            value = getattr(stat, key, None)
            if value is not None:
                seen.add(LAYERS)
                if _bad(value):
                    bad.append(f"{layer}/{key}={value}")
                    bad_sources.add(LAYERS)
    if bad:
        memory["bad"] = sorted(bad_sources)
        shown = listed(bad)
        return [
            Verdict(
                True,
                float(len(bad)),
                f"non-finite values at step {obs.step}: {shown}",
                details={"non_finite": bad[:50]},
            )
        ]
    if not seen or not set(memory.get("bad", [])) <= seen:
        return []
    memory.pop("bad", None)
    return [Verdict(False, 0.0)]
