"""``python -m bench.prediction``: train or reuse the suite, backtest every predictor, print tables.

python -m bench.prediction                 # reuse the recorded runs, write docs/benchmarks.md
python -m bench.prediction --no-write      # print only
python -m bench.prediction --retrain       # train every run again and re-record it
python -m bench.prediction --runs gpt-lr-ramp,gpt-lr-ramp-safe   # a subset, print only
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

from alerts.config import Config, Rule, parse_config
from alerts.predictors import PREDICTORS
from bench.common import command_parser
from bench.prediction.calibrated import score_calibrated
from bench.prediction.candidates import CANDIDATES, EAGER, EAGER_TUNED, TUNED
from bench.prediction.evaluate import backtest, loss_series, score_suite
from bench.prediction.heldout import leave_one_mechanism_out
from bench.prediction.record import PROJECT, ensure_recorded
from bench.prediction.report import per_run, summary
from bench.prediction.runs import BY_NAME, SUITE
from storage import runs as run_store
from storage.db import Database

DEFAULT_SET = "default rule set"
ALL_ENABLED = "all enabled, info included"
WITHOUT_TUNED = "default rule set without the tuned rules"
EAGER_WITHOUT_TUNED = "eager rule set without the tuned rules"
EAGER_SET = "eager rule set"
FIGURE_RUNS = ["gpt-lr-ramp", "gpt-qkv-ramp", "mlp-adam-ramp", "gpt-lr-ramp-safe"]


def default_sources(config: Config, label: str = "default") -> dict[str, tuple[str, set[str]]]:
    """One source per enabled, replayable predictor; the default rule set (what is sent:
    severity warning or critical); and everything enabled, ``info`` included."""
    rules = replayable_rules(config)
    sources = {n: (label, {n}) for n in rules}
    sent = sent_rules(config)
    sources[DEFAULT_SET] = (label, sent)
    sources[WITHOUT_TUNED] = (label, sent - set(TUNED))
    sources[ALL_ENABLED] = (label, set(rules))
    return sources


def replayable_rules(config: Config) -> dict[str, Rule]:
    """The rules ``config`` enables that a backtest replays (not the wall-clock ones)."""
    return {n: r for n, r in config.enabled_rules().items() if not PREDICTORS[n].wall_time}


def sent_rules(config: Config) -> set[str]:
    """The replayable rules ``config`` sends (severity warning or critical)."""
    rules = replayable_rules(config)
    return {n for n, r in rules.items() if r.severity in ("warning", "critical")}


def explore(db: Database, suite: list) -> dict:
    """Score every candidate formulation alone."""
    configs = {c.label: c.config() for c in CANDIDATES}
    sources = {c.label: (c.label, {c.predictor}) for c in CANDIDATES}
    return score_suite(db, suite, configs, sources)


def candidates_of(explored: dict, tuned: dict[str, str]) -> list[dict]:
    """Per tuned rule, the scores of its candidate settings (by their labels' prefix)."""
    return [{k: v for k, v in explored.items() if k.startswith(f"{p} ")} for p in tuned.values()]


def figures(db: Database, config: Config) -> list[str]:
    """Loss + SA heatmap PNGs of a few runs under docs/img/; [] without matplotlib."""
    try:
        from bench.prediction.plots import IMG, loss_and_sa
    except ImportError:
        return []
    names = []
    for name in FIGURE_RUNS:
        spec = BY_NAME[name]
        run = run_store.find_run(db, name, project=PROJECT)
        explosion, alerts = backtest(db, spec, config)
        try:
            out = loss_and_sa(
                db,
                run.id,
                name,
                loss_series(db, run.id),
                explosion,
                alerts,
                IMG / f"prediction-{name}.png",
            )
        except ImportError:
            return []
        names.append(out.name)
    return names


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("bench.prediction", __doc__)
    parser.add_argument("--runs", help="comma-separated run names (default: the whole suite)")
    parser.add_argument("--retrain", action="store_true", help="train and re-record every run")
    parser.add_argument("--no-write", action="store_true", help="do not update the docs")
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
        eager = parse_config({"predictors": EAGER})
        sources = default_sources(config)
        sources[EAGER_SET] = ("eager", sent_rules(eager))
        sources[EAGER_WITHOUT_TUNED] = ("eager", sent_rules(eager) - set(EAGER_TUNED))
        scores = score_suite(db, suite, {"default": config, "eager": eager}, sources)
        without = scores.pop(WITHOUT_TUNED)
        eager_without = scores.pop(EAGER_WITHOUT_TUNED)
        print("### Shipped defaults\n\n" + summary(scores) + "\n\n" + per_run(scores))
        if args.runs:
            return 0
        calibrated, _ = score_calibrated(db, suite)
        print("\n### Calibrated (leave twins out)\n\n" + summary(calibrated))
        print("\n" + per_run(calibrated))
        explored = explore(db, suite)
        print("\n### Candidates\n\n" + summary(explored))
        held, chosen = leave_one_mechanism_out(suite, without, candidates_of(explored, TUNED))
        held_eager, chosen_eager = leave_one_mechanism_out(
            suite,
            eager_without,
            candidates_of(explored, EAGER_TUNED),
            source="eager rule set, held out",
        )
        helds = {held.source: held, held_eager.source: held_eager}
        print("\n### Rule sets, leave one mechanism out\n\n" + summary(helds))
        print("\n" + per_run(helds) + "\n\n" + str(chosen) + "\n" + str(chosen_eager))
        if not args.no_write:
            from bench.common import write_section
            from bench.prediction.docs import section

            images = figures(db, config)
            explosions = {o.run: o.explosion for o in scores[DEFAULT_SET].outcomes}
            write_section(
                "Prediction",
                section(
                    scores, calibrated, explored, explosions, images, helds, chosen, chosen_eager
                ),
            )
            print("(written to docs/benchmarks.md)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
