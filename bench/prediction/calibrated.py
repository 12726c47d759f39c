"""Scores after ``tripwire calibrate``, never tuned on the run being scored.

For every scored run, thresholds are learned (``alerts.calibrate.learn``, as the command does)
from the *stable* runs of the same architecture, leaving out the scored run itself and every run
one knob away from it (its ``twin``, and runs whose twin it is). The scored run is then
backtested with those thresholds. Divergent runs are never used for calibration.
"""

from __future__ import annotations

from alerts.calibrate import apply, learn
from alerts.config import Config, parse_config
from alerts.predictors import PREDICTORS
from bench.prediction.evaluate import Score, backtest, outcome
from bench.prediction.record import PROJECT
from bench.prediction.runs import STABLE, RunSpec
from storage import runs as run_store
from storage.db import Database

CALIBRATED = [
    "sa_collapse",
    "grad_norm_spike",
    "weight_growth",
    "loss_spike",
    "sigma_surge",
    "sa_shift",
    "diverging",
    "rank_collapse",
    "attention_logits",
    "log_z_drift",
    "update_size",
]


def base_config() -> Config:
    """Every calibratable predictor on, at its default parameters."""
    rules = {n: {"enabled": n in CALIBRATED} for n in PREDICTORS}
    return parse_config({"predictors": rules})


def healthy_for(spec: RunSpec, suite: list[RunSpec]) -> list[RunSpec]:
    """Stable runs of ``spec``'s architecture that are not ``spec`` nor one knob away from it."""
    near = {spec.name, spec.twin} | {s.name for s in suite if s.twin == spec.name}
    return [s for s in suite if s.kind == STABLE and s.arch == spec.arch and s.name not in near]


def calibrated_config(db: Database, healthy: list[RunSpec], margin: float = 0.25) -> Config:
    """Every calibratable predictor with the thresholds ``tripwire calibrate`` learns from
    ``healthy`` (recorded in ``db``)."""
    base = base_config()
    runs = [run_store.find_run(db, h.name, project=PROJECT) for h in healthy]
    return apply(base, learn(db, runs, base, margin=margin))


def score_calibrated(
    db: Database, suite: list[RunSpec], margin: float = 0.25
) -> tuple[dict[str, Score], dict[str, list[str]]]:
    """Per-predictor and all-together scores with leave-twins-out calibration."""
    scores = {n: Score(f"{n} (calibrated)") for n in CALIBRATED}
    scores["all calibrated"] = Score("all calibrated")
    used: dict[str, list[str]] = {}
    for spec in suite:
        healthy = healthy_for(spec, suite)
        used[spec.name] = [h.name for h in healthy]
        config = calibrated_config(db, healthy, margin)
        explosion, alerts = backtest(db, spec, config)
        for name in CALIBRATED:
            chosen = [a for a in alerts if a.predictor == name]
            scores[name].outcomes.append(outcome(spec, explosion, chosen))
        scores["all calibrated"].outcomes.append(outcome(spec, explosion, alerts))
    return scores, used


def score_calibrated_on(
    db: Database, healthy: list[RunSpec], scored: list[RunSpec], source: str
) -> Score:
    """Every predictor calibrated on the ``healthy`` runs of the scored run's architecture (what
    a team does once it has healthy runs of a model), all together, on the ``scored`` runs."""
    configs = {
        arch: calibrated_config(db, [h for h in healthy if h.arch == arch])
        for arch in {s.arch for s in scored}
    }
    score = Score(source)
    for spec in scored:
        explosion, alerts = backtest(db, spec, configs[spec.arch])
        score.outcomes.append(outcome(spec, explosion, alerts))
    return score
