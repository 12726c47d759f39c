"""Backtest: replay stored runs through the same engine as the live service, in memory.

Nothing is written: the live alert state, cursors and notifications are untouched. The run is
fed in chunks of steps exactly as ticks would feed it, so a backtest of a finished run lists
the same alerts the live scheduler raised on it (``stalled``, a judgement of wall time, is
live-only and not replayed).

>>> found = evaluate_run(db, find_run(db, "gpt-small-lr3e-3"))      # doctest: +SKIP
>>> [(a.predictor, a.layer, a.step) for a in found]                  # doctest: +SKIP
[('sa_collapse', 'blocks.2.attn.proj', 260), ('non_finite', None, 311)]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from alerts import observations
from alerts.config import Config
from alerts.engine import RunEvaluator
from alerts.lifecycle import AlertState
from alerts.predictors import PREDICTORS
from storage.db import Database
from storage.entities import DEFAULT_PROJECT, Run


@dataclass(frozen=True)
class BacktestAlert:
    """An alert a replay raised; ``step`` is the step it fired at."""

    run: str
    run_uid: str
    predictor: str
    severity: str
    step: int
    layer: str | None
    message: str
    score: float | None
    first_step: int
    resolved_step: int | None
    loss: float | None
    project: str = DEFAULT_PROJECT

    def as_dict(self) -> dict:
        return asdict(self)


def evaluate_run(
    db: Database, run: Run, config: Config | None = None, *, chunk_steps: int | None = None
) -> list[BacktestAlert]:
    """Replay all stored steps of ``run``; returns the alerts that fired, in firing order."""
    config = config or Config()
    rules = {n: r for n, r in config.enabled_rules().items() if not PREDICTORS[n].wall_time}
    chunk = chunk_steps or config.engine.max_steps_per_tick
    evaluator = RunEvaluator(run.id, rules, {}, [], resolve_after=config.engine.resolve_after)
    limit = observations.horizon(db, replace(run, status="finished"))
    start = -1
    while limit is not None and start < limit:
        upto = min(limit, start + chunk)
        for obs in observations.load(db, run.id, start, upto):
            evaluator.feed(obs)
        start = upto
    fired = [a for a in evaluator.touched() if a.fired_step is not None]
    return [_to_result(run, a) for a in sorted(fired, key=lambda a: (a.fired_step, a.predictor))]


def _to_result(run: Run, alert: AlertState) -> BacktestAlert:
    return BacktestAlert(
        run=run.name,
        project=run.project,
        run_uid=run.uid,
        predictor=alert.predictor,
        severity=alert.severity,
        step=alert.fired_step,
        layer=alert.layer,
        message=alert.message or "",
        score=alert.score,
        first_step=alert.first_step,
        resolved_step=alert.resolved_step,
        loss=alert.details.get("loss"),
    )
