"""``python -m bench.prediction``: train or reuse the suite, backtest every predictor, print tables.

python -m bench.prediction                 # reuse the recorded runs (no training)
python -m bench.prediction --retrain       # train every run again and re-record it
python -m bench.prediction --runs gpt-lr-ramp,gpt-lr-ramp-safe
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from alerts.config import Config
from alerts.predictors import PREDICTORS
from bench.prediction.calibrated import score_calibrated
from bench.prediction.candidates import CANDIDATES
from bench.prediction.evaluate import score_suite
from bench.prediction.record import ensure_recorded
from bench.prediction.report import per_run, summary
from bench.prediction.runs import BY_NAME, SUITE
from storage.db import Database

DEFAULT_SET = "default rule set"
ALL_ENABLED = "all enabled, info included"


def default_sources(config: Config, label: str = "default") -> dict[str, tuple[str, set[str]]]:
    """One source per enabled, replayable predictor; the default rule set (what is sent:
    severity warning or critical); and everything enabled, ``info`` included."""
    rules = {n: r for n, r in config.enabled_rules().items() if not PREDICTORS[n].wall_time}
    sources = {n: (label, {n}) for n in rules}
    sent = {n for n, r in rules.items() if r.severity in ("warning", "critical")}
    sources[DEFAULT_SET] = (label, sent)
    sources[ALL_ENABLED] = (label, set(rules))
    return sources


def explore(db: Database, suite: list) -> dict:
    """Score every candidate formulation alone."""
    configs = {c.label: c.config() for c in CANDIDATES}
    sources = {c.label: (c.label, {c.predictor}) for c in CANDIDATES}
    return score_suite(db, suite, configs, sources)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.prediction", description=__doc__)
    parser.add_argument("--runs", help="comma-separated run names (default: the whole suite)")
    parser.add_argument("--retrain", action="store_true", help="train and re-record every run")
    parser.add_argument("--explore", action="store_true", help="also score every candidate")
    parser.add_argument(
        "--calibrated", action="store_true", help="also score leave-twins-out calibration"
    )
    parser.add_argument("--db", help="database URL to fill (default: a temporary SQLite file)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    suite = [BY_NAME[n] for n in args.runs.split(",")] if args.runs else SUITE
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(args.db or f"sqlite:///{Path(tmp) / 'bench.db'}")
        db.ensure_schema()
        for spec in suite:
            how = ensure_recorded(spec, db, retrain=args.retrain)
            print(f"{spec.name}: {how}", file=sys.stderr, flush=True)
        config = Config()
        scores = score_suite(db, suite, {"default": config}, default_sources(config))
        print("## Summary (default parameters)\n")
        print(summary(scores))
        print("\n## Per run\n")
        print(per_run(scores))
        if args.calibrated:
            calibrated, used = score_calibrated(db, suite)
            print("\n## Calibrated on other stable runs of the same architecture\n")
            print(summary(calibrated))
            print("\n## Calibrated, per run\n")
            print(per_run(calibrated))
            print("\nhealthy runs used:", used, file=sys.stderr)
        if args.explore:
            explored = explore(db, suite)
            print("\n## Candidate formulations (each alone)\n")
            print(summary(explored))
            print("\n## Candidates per run\n")
            print(per_run(explored))
    return 0


if __name__ == "__main__":
    sys.exit(main())
