"""Predictors of the logit signals beside the loss (docs/alerts.md, "Logit signals").

``attention_logits``: the largest attention logit ``q·k/√d`` is past a level where softmax
attention collapses onto one key (attention-entropy collapse; qk-norm is the usual fix) *and*
still multiplying fast (``min_growth = 0``: the level alone).
``log_z_drift``: the output layer's log-partition ``log Z = logsumexp(logits)`` drifts away
from where it settled (output-logit divergence; z-loss is the usual fix). The collector cannot
see inside a fused attention kernel, so the training loop logs the attention logit:
``monitor.log(step, loss=loss, attn_logit_max=...)``; ``log_z`` the collector measures itself
where it knows the output layer (``watch(..., output_layer=...)``, Hugging Face models), else
the loop logs it too. Runs without a signal are never judged on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from alerts.predictors.base import Observation, Verdict, finite

ATTENTION_PARAMS = {
    "key": "attn_logit_max",
    "max_logit": 50.0,
    "warmup_steps": 0,
    "min_growth": 10.0,
    "growth_steps": 50,
}
"""Holds when the logged ``key`` exceeds ``max_logit`` (after ``warmup_steps``) and is at least
``min_growth`` times its value ``growth_steps`` steps earlier (the last value logged at or
before then), and holds from then on until it falls back to ``max_logit``. Softmax weights
differ by ``e^50`` at 50: one key takes all the attention. The growth makes it a runaway, not a
level: on the prediction benchmark many runs without qk-norm reach logits in the hundreds or
thousands and train on (``min_growth = 0`` judges the level alone)."""

LOG_Z_PARAMS = {"key": "log_z", "max_drift": 5.0, "warmup_steps": 100, "baseline_steps": 100}
"""The baseline is the mean of the logged ``key`` over ``baseline_steps`` steps after
``warmup_steps``; holds when a later value is more than ``max_drift`` nats away from it."""


def attention_logits(obs: Observation, memory: dict, params: Mapping[str, Any]) -> list[Verdict]:
    """The largest attention logit against a level, and its growth.

    >>> p, m = dict(ATTENTION_PARAMS, growth_steps=20), {}
    >>> [attention_logits(Observation(s, {"attn_logit_max": v}), m, p)[0].holds
    ...  for s, v in [(0, 20.0), (10, 60.0), (20, 120.0), (30, 700.0)]]
    [False, False, False, True]
    >>> level = dict(ATTENTION_PARAMS, min_growth=0.0)
    >>> [attention_logits(Observation(s, {"attn_logit_max": v}), {}, level)[0].holds
    ...  for s, v in [(0, 12.0), (10, 80.0)]]
    [False, True]
    """
    value = obs.scalars.get(params["key"])
    if not finite(value):
        return []
    growth = _growth(memory, obs.step, value, int(params["growth_steps"]))
    if obs.step < params["warmup_steps"]:
        return [Verdict(False, 0.0)]
    limit = float(params["max_logit"])
    min_growth = float(params["min_growth"])
    details = {params["key"]: value}
    if min_growth > 0:
        details["growth"] = growth
        running_away = growth is not None and growth >= min_growth
        # once it ran away it stays an alert until the logit falls back under the level
        holds = value > limit and (running_away or memory.get("ran_away", False))
        memory["ran_away"] = holds
        why = (
            f"and {growth:.3g}× its value {params['growth_steps']} steps earlier"
            if running_away
            else f"since it grew over {min_growth:g}× in {params['growth_steps']} steps"
        )
    else:
        holds = value > limit
        why = ""
    message = (
        f"largest attention logit {value:.4g} is above {limit:g} {why} at step {obs.step}: "
        "attention is collapsing onto single keys (no qk-norm?)"
        if holds
        else ""
    )
    return [Verdict(holds, value, " ".join(message.split()), details=details)]


def _growth(memory: dict, step: int, value: float, steps: int) -> float | None:
    """``value`` over the last one remembered at or before ``step - steps``; None before then."""
    history = memory.setdefault("history", [])
    history.append((step, value))
    while len(history) > 1 and history[1][0] <= step - steps:
        del history[0]
    then_step, then = history[0]
    if then_step > step - steps or then <= 0:
        return None
    return value / then


def log_z_drift(obs: Observation, memory: dict, params: Mapping[str, Any]) -> list[Verdict]:
    """Distance of the output ``log Z`` from its settled level, in nats.

    >>> p = dict(LOG_Z_PARAMS, warmup_steps=0, baseline_steps=20)
    >>> m = {}
    >>> [log_z_drift(Observation(s, {"log_z": v}), m, p)[0].holds
    ...  for s, v in [(0, 5.0), (10, 5.2), (20, 6.0), (30, -2.0)]]
    [False, False, False, True]
    """
    value = obs.scalars.get(params["key"])
    if not finite(value):
        return []
    start = params["warmup_steps"]
    if obs.step < start:
        return [Verdict(False, 0.0)]
    if obs.step < start + params["baseline_steps"]:
        memory["sum"] = memory.get("sum", 0.0) + value
        memory["n"] = memory.get("n", 0) + 1
        return [Verdict(False, 0.0)]
    if not memory.get("n"):
        return [Verdict(False, 0.0)]
    baseline = memory["sum"] / memory["n"]
    drift = abs(value - baseline)
    holds = drift > params["max_drift"]
    message = (
        f"output log Z {value:.3g} has drifted {drift:.2f} nats from its level {baseline:.3g} "
        "(output-logit divergence; z-loss or weight decay on the output layer counter it)"
        if holds
        else ""
    )
    return [Verdict(holds, drift, message, details={"log_z": value, "baseline": baseline})]
