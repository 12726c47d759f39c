"""Score the predictors on the recorded runs, through the same backtest as ``tripwire evaluate``.

Definitions (applied by code, documented in docs/benchmarks.md):

- **explosion step** ``E``: :func:`tripwire.demo_training.explosion_step` with a 1-nat margin
  and a 20-step window: the first step whose loss is non-finite, or exceeds the running minimum
  of the earlier losses by more than 1 nat while the median of the 20 losses from there does too.
- An alert's step is the training step whose data made it fire (``fired_step``).
- On a divergent run it is **warned** if an alert that fired at ``s <= E - 5`` is still open
  (not resolved) at ``E - 5``: lead ``E - s`` for the earliest such ``s``. An alert that fired
  and resolved before then does not count. **Late** if nothing was open then but an alert fires
  later (including after the explosion), **missed** if none does.
- A run meant to diverge whose loss did not explode (retrained on another CPU, a near-edge run
  can train on) is reported as **not exploded**, and counts neither way.
- On a stable run any alert is a **false alarm**. On the control run an alert before the
  operator's change is a false alarm; one at or after it is reported (it cannot be foreseen).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from alerts.backtest import BacktestAlert, evaluate_run
from alerts.config import Config
from bench.prediction.record import PROJECT
from bench.prediction.runs import CONTROL, DIVERGENT, STABLE, RunSpec
from storage import runs as run_store
from storage import stats
from storage.db import Database
from tripwire.demo_training import explosion_step

MIN_LEAD = 5
"""An explosion counts as warned only if the alert fired at least this many steps before it."""


@dataclass(frozen=True)
class RunOutcome:
    """What one alert source (a predictor, or a rule set) did on one run."""

    run: str
    kind: str
    explosion: int | None
    first: int | None
    """The firing step that counts: on a divergent run the earliest alert still open 5 steps
    before the explosion, else the first after that; elsewhere the first alert (before the
    change, on the control run)."""
    first_after: int | None = None
    """Control run only: first firing step at or after the change."""

    @property
    def verdict(self) -> str:
        """warned / late / missed / not exploded (divergent), false alarm / quiet (stable,
        control)."""
        if self.kind == DIVERGENT:
            if self.explosion is None:
                return "not exploded"
            if self.first is None:
                return "missed"
            return "warned" if self.first <= self.explosion - MIN_LEAD else "late"
        return "false alarm" if self.first is not None else "quiet"

    @property
    def lead(self) -> int | None:
        if self.kind == DIVERGENT and self.explosion is not None and self.first is not None:
            return self.explosion - self.first
        return None


@dataclass
class Score:
    """One alert source over the whole suite."""

    source: str
    outcomes: list[RunOutcome] = field(default_factory=list)

    def of(self, kind: str) -> list[RunOutcome]:
        """The outcomes of runs of ``kind``; for ``DIVERGENT``, only the runs that exploded."""
        return [
            o
            for o in self.outcomes
            if o.kind == kind and not (kind == DIVERGENT and o.explosion is None)
        ]

    @property
    def warned(self) -> int:
        return sum(o.verdict == "warned" for o in self.of(DIVERGENT))

    @property
    def median_lead(self) -> float | None:
        leads = [o.lead for o in self.of(DIVERGENT) if o.verdict == "warned"]
        return statistics.median(leads) if leads else None

    @property
    def false_alarms(self) -> int:
        return sum(o.verdict == "false alarm" for o in self.of(STABLE))

    @property
    def control_false(self) -> int:
        return sum(o.verdict == "false alarm" for o in self.of(CONTROL))


def loss_series(db: Database, run_id: int) -> list[float]:
    """Every step's loss in step order (NaN and Inf included, missing steps as NaN)."""
    points = {p.step: p.value for p in stats.scalar_series(db, run_id, keys=["loss"])}
    if not points:
        return []
    return [float("nan") if points.get(s) is None else points[s] for s in range(max(points) + 1)]


def backtest(db: Database, spec: RunSpec, config: Config) -> tuple[int | None, list[BacktestAlert]]:
    """The run's explosion step and the alerts a backtest with ``config`` raises on it."""
    run = run_store.find_run(db, spec.name, project=PROJECT)
    explosion = explosion_step(loss_series(db, run.id)) if spec.kind == DIVERGENT else None
    return explosion, evaluate_run(db, run, config)


def outcome(spec: RunSpec, explosion: int | None, alerts: list[BacktestAlert]) -> RunOutcome:
    """Judge the alerts of one source on one run (``alerts`` already filtered to the source)."""
    steps = sorted(a.step for a in alerts)
    if spec.kind == CONTROL:
        before = [s for s in steps if s < spec.change_step]
        after = [s for s in steps if s >= spec.change_step]
        return RunOutcome(
            spec.name, spec.kind, None, before[0] if before else None, after[0] if after else None
        )
    if spec.kind == DIVERGENT and explosion is not None:
        return RunOutcome(spec.name, spec.kind, explosion, _first_warning(alerts, explosion))
    return RunOutcome(spec.name, spec.kind, explosion, steps[0] if steps else None)


def _first_warning(alerts: list[BacktestAlert], explosion: int) -> int | None:
    """The earliest firing of an alert still open ``MIN_LEAD`` steps before the explosion;
    else the first firing after that (late); None if nothing fired then. An alert that fired
    and resolved long before is no warning: on-call saw it end."""
    deadline = explosion - MIN_LEAD
    standing = [
        a.step
        for a in alerts
        if a.step <= deadline and (a.resolved_step is None or a.resolved_step > deadline)
    ]
    if standing:
        return min(standing)
    return min((a.step for a in alerts if a.step > deadline), default=None)


def score_suite(
    db: Database,
    suite: list[RunSpec],
    configs: dict[str, Config],
    sources: dict[str, tuple[str, set[str]]],
) -> dict[str, Score]:
    """Score every source over the suite.

    ``configs`` maps a label to a :class:`Config`; ``sources`` maps a source name to
    ``(config label, predictor names it counts)``, so one backtest per run and config serves
    every source that reads it.
    """
    scores = {name: Score(name) for name in sources}
    for spec in suite:
        per_config = {label: backtest(db, spec, cfg) for label, cfg in configs.items()}
        for name, (label, predictors) in sources.items():
            explosion, alerts = per_config[label]
            explosion = explosion if explosion is not None else _any_explosion(per_config)
            chosen = [a for a in alerts if a.predictor in predictors]
            scores[name].outcomes.append(outcome(spec, explosion, chosen))
    return scores


def _any_explosion(per_config: dict) -> int | None:
    return next((e for e, _ in per_config.values() if e is not None), None)
