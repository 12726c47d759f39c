"""Calibration: learn a model's alert thresholds from runs the user marks as healthy.

For every enabled predictor with a threshold, the healthy runs are replayed through the
predictor's own function (as the engine feeds it) and the highest score that *persisted* for the
rule's ``for_checks`` evaluations in a row is found; the new threshold is that level times
``1 + margin``. On data like the healthy runs the rule therefore stays silent, while it may now
be tighter (earlier) than the conservative default. A predictor whose healthy maximum already
reaches its cap (a fraction of layers of 1) is switched off for that model.

>>> thresholds = learn(db, [run_a, run_b], Config())            # doctest: +SKIP
>>> thresholds["grad_norm_spike"]                               # doctest: +SKIP
Threshold(predictor='grad_norm_spike', param='z_threshold', healthy_max=3.1, value=3.72, ...)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from alerts import observations
from alerts.config import Config, Rule
from alerts.engine import RunEvaluator
from alerts.predictors import PREDICTORS
from storage.db import Database
from storage.entities import Run

THRESHOLD_PARAMS: dict[str, tuple[str, float | None]] = {
    "sa_collapse": ("excess", 1.0),
    "grad_norm_spike": ("z_threshold", None),
    "weight_growth": ("max_rate", None),
    "loss_spike": ("rel_increase", None),
    "sigma_surge": ("min_layers", 1.0),
    "sa_shift": ("min_layers", 1.0),
    "diverging": ("min_layers", 1.0),
    "rank_collapse": ("min_layers", 1.0),
    "attention_logits": ("max_logit", None),
    "log_z_drift": ("max_drift", None),
    "update_size": ("min_layers", 1.0),
    "sa_growth": ("excess", 1.0),
}
"""Predictor → (the parameter its score is compared with, the highest meaningful value)."""

DEFAULT_MARGIN = 0.25


@dataclass(frozen=True)
class Threshold:
    """A learned threshold: ``value`` replaces ``param``; ``enabled`` False switches it off."""

    predictor: str
    param: str
    default: float
    healthy_max: float
    value: float
    enabled: bool = True


def persistent_max(scores: Iterable[float], for_checks: int) -> float:
    """Highest level a score held for ``for_checks`` consecutive evaluations.

    >>> persistent_max([0.1, 5.0, 0.2, 0.9, 1.0, 0.8], 2)
    0.9
    >>> persistent_max([0.1, 5.0], 1)
    5.0
    """
    scores, best = list(scores), 0.0
    for i in range(len(scores) - for_checks + 1):
        best = max(best, min(scores[i : i + for_checks]))
    return best


class NotHealthy(ValueError):
    """A run given as healthy on which a critical alert fires (the loss blew up)."""

    def __init__(self, run: Run, predictor: str, step: int, message: str):
        super().__init__(
            f"run {run.name} did not train healthily: {predictor} fired at step {step} "
            f"({message}); calibrate on runs that did"
        )
        self.run, self.predictor, self.step = run, predictor, step


def healthy_scores(
    db: Database,
    run: Run,
    rules: Mapping[str, Rule],
    *,
    chunk_steps: int = 20_000,
    refuse: Mapping[str, Rule] | None = None,
) -> dict[str, list[list[float]]]:
    """Each rule's predictor scores over ``run``, one series per layer (or one for the run):
    one replay for all of them, ``chunk_steps`` steps of observations in memory at a time.
    The ``refuse`` rules are evaluated on the same replay, as the engine does; if one of them
    fires, :class:`NotHealthy` is raised."""
    last = observations.horizon(db, run)
    memories: dict[str, dict] = {name: {} for name in rules}
    series: dict[str, dict[str | None, list[float]]] = {name: {} for name in rules}
    judge = RunEvaluator(run.id, dict(refuse), {}, []) if refuse else None
    start = -1
    while last is not None and start < last:
        upto = min(last, start + chunk_steps)
        for obs in observations.load(db, run.id, start, upto):
            for name, rule in rules.items():
                for verdict in PREDICTORS[name].fn(obs, memories[name], rule.params):
                    score = verdict.score if math.isfinite(verdict.score) else 0.0
                    series[name].setdefault(verdict.layer, []).append(score)
            if judge is not None:
                judge.feed(obs)
                fired = [a for a in judge.touched() if a.fired_step is not None]
                if fired:
                    first = min(fired, key=lambda a: a.fired_step)
                    raise NotHealthy(run, first.predictor, first.fired_step, first.message or "")
        start = upto
    return {name: list(by_layer.values()) for name, by_layer in series.items()}


def learn(
    db: Database,
    runs: list[Run],
    config: Config,
    *,
    margin: float = DEFAULT_MARGIN,
    refuse_blowups: bool = False,
) -> dict[str, Threshold]:
    """Thresholds for every enabled, calibratable predictor from the healthy ``runs``; a
    predictor whose signal the runs never logged (no score at all) is left out. With
    ``refuse_blowups``, a run on which a critical alert fires raises :class:`NotHealthy`
    (checked on the same replay)."""
    rules = {n: r for n, r in config.enabled_rules().items() if n in THRESHOLD_PARAMS}
    critical = {
        n: r
        for n, r in config.enabled_rules().items()
        if r.severity == "critical" and not PREDICTORS[n].wall_time
    }
    refuse = critical if refuse_blowups else None
    replayed = [healthy_scores(db, run, rules, refuse=refuse) for run in runs]
    out = {}
    for name, rule in rules.items():
        param, cap = THRESHOLD_PARAMS[name]
        series = [scores for by_rule in replayed for scores in by_rule[name] if scores]
        if not series:
            continue
        peak = max(persistent_max(scores, rule.for_checks) for scores in series)
        value = peak * (1 + margin) if peak > 0 else float(rule.params[param])
        enabled = cap is None or peak < cap
        value = min(value, cap) if cap is not None else value
        out[name] = Threshold(name, param, float(rule.params[param]), peak, value, enabled)
    return out


def overrides(thresholds: Mapping[str, Threshold]) -> dict[str, dict]:
    """``[predictors.NAME]`` tables for ``tripwire.toml``."""
    tables = {}
    for t in thresholds.values():
        value = t.value
        if isinstance(PREDICTORS[t.predictor].params[t.param], float):
            value = float(f"{value:.4g}")
        tables[t.predictor] = {t.param: value} if t.enabled else {"enabled": False}
    return tables


def apply(config: Config, thresholds: Mapping[str, Threshold]) -> Config:
    """``config`` with the learned thresholds in place (what the written file will load as)."""
    from alerts.config import parse_config

    data = config.model_dump(exclude_unset=True)
    rules = data.setdefault("predictors", {})
    for name, table in overrides(thresholds).items():
        rule = {k: v for k, v in rules.get(name, {}).items() if v is not None}
        rule.update(table)
        rules[name] = rule
    return parse_config(data)
