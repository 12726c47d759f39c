"""What a predictor sees (an :class:`Observation`) and what it says (a :class:`Verdict`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from storage.entities import LayerStat


@dataclass(frozen=True)
class Observation:
    """One training step of a run: its scalars, and its layer statistics on check steps.

    >>> Observation(step=10, scalars={"loss": 2.3, "grad_norm": 0.8}).scalars["loss"]
    2.3
    """

    step: int
    scalars: Mapping[str, float | None] = field(default_factory=dict)
    layers: Mapping[str, LayerStat] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    """A predictor's judgement of one step: does its condition hold (for this layer)?

    ``layer`` is None for run-level predictors. ``score`` is the quantity compared with the
    threshold (higher is worse), ``message`` says it in words for a human.
    """

    holds: bool
    score: float
    message: str = ""
    layer: str | None = None
    details: dict = field(default_factory=dict)


PredictorFn = Callable[[Observation, dict, Mapping[str, Any]], list[Verdict]]
"""``fn(observation, memory, params) -> verdicts``.

``memory`` is the predictor's own JSON-serializable dict for this run (EMAs, baselines); the
engine persists it between evaluations, so ``fn`` must keep everything it needs there and
nothing anywhere else: fed the same steps in the same order it gives the same verdicts, however
the steps are split into ticks.
"""


@dataclass(frozen=True)
class Predictor:
    """A registered predictor: its function, default severity, persistence and parameters."""

    name: str
    fn: Callable
    severity: str
    for_checks: int
    params: Mapping[str, Any]
    summary: str
    per_layer: bool = False
    resolve_after: int | None = None
    """Clear evaluations before a firing alert resolves (None: the engine's default)."""
    wall_time: bool = False
    """Judges wall-clock time, not data (``stalled``, ``no_progress``): live only, never
    replayed; ``fn(run, now, params)`` with the run's :class:`storage.entities.Run`."""
    enabled: bool = True
    """Evaluated unless ``tripwire.toml`` says otherwise; experimental predictors ship off."""
    minimums: Mapping[str, tuple[float, str]] = field(default_factory=dict)
    """The lowest value a numeric parameter may be set to, and why (beyond ``>= 0``)."""


def finite(value: float | None) -> bool:
    """True for a real, finite number (not None, NaN or ±Inf)."""
    return value is not None and math.isfinite(value)
