"""Fresh runs: three of the suite's runs at seeds and peaks no rule was ever tuned on.

Every rule set was tuned on the suite's recordings. These runs are the suite's q/k/v ramp
(``gpt-qkv-ramp``: only the q/k/v projection's learning rate ramps, no qk-norm), its GPT
learning-rate ramp (``gpt-lr-ramp``) and its SGD+momentum MLP ramp (``mlp-sgd-ramp``) at other
seeds and peak learning rates. None of them was trained before the rules were chosen, and they
are not recorded: the command trains them each time. They run 200 steps longer than the suite's
runs, at the peak learning rate. What a run is, is what it did: *divergent* if it exploded (the
suite's definition), else *stable*.

python -m bench.prediction.fresh              # about 7 minutes on one CPU thread
python -m bench.prediction.fresh --no-write   # print only
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from alerts.config import Config, parse_config
from alerts.predictors import PREDICTORS
from alerts.predictors.base import Observation
from bench.prediction.__main__ import DEFAULT_SET, EAGER_SET, sent_rules
from bench.prediction.candidates import EAGER
from bench.prediction.evaluate import Score, loss_series, score_suite
from bench.prediction.record import PROJECT, present, train_into
from bench.prediction.report import per_run, summary
from bench.prediction.runs import BY_NAME, DIVERGENT, STABLE, RunSpec
from storage import runs as run_store
from storage import stats
from storage.db import Database
from tripwire.demo_training import explosion_step

TITLE = "Prediction on fresh runs"


@dataclass(frozen=True)
class Family:
    """A suite run trained again at ``peaks`` of the learning-rate schedule named ``knob``."""

    base: str
    short: str
    knob: str
    peaks: tuple[float, ...]


FAMILIES = (
    # the suite: seed 0 explodes at 0.3, trains on at 0.1 and 0.03; seed 1 explodes at 0.6
    Family("gpt-qkv-ramp", "qkv", "focus_schedule", (0.03, 0.1, 0.2, 0.3, 0.6, 1.0)),
    # the suite: seeds 0 and 1 explode at 0.1; seed 0 trains on at 0.03
    Family("gpt-lr-ramp", "lr", "schedule", (0.03, 0.06, 0.1)),
    # the suite: seeds 0 and 1 explode at 3; seed 0 trains on at 0.3
    Family("mlp-sgd-ramp", "sgd", "schedule", (0.3, 1.0, 3.0)),
)
SEEDS = (2, 3)
EXTRA_STEPS = 200


def fresh_runs() -> list[RunSpec]:
    """Every family at every peak and seed (kind decided after training)."""
    runs = []
    for family in FAMILIES:
        base = BY_NAME[family.base]
        for peak in family.peaks:
            for seed in SEEDS:
                schedule = dataclasses.replace(getattr(base, family.knob), peak=peak)
                runs.append(
                    dataclasses.replace(
                        base,
                        name=f"fresh-{family.short}-{peak:g}-s{seed}",
                        kind=STABLE,
                        steps=base.steps + EXTRA_STEPS,
                        seed=seed,
                        twin=None,
                        **{family.knob: schedule},
                    )
                )
    return runs


def train_and_classify(spec: RunSpec, db: Database) -> RunSpec:
    """Train ``spec`` into ``db`` (unless it is there); the spec again, divergent if it exploded."""
    if not present(db, spec.name):
        train_into(spec, db.url)
    run = run_store.find_run(db, spec.name, project=PROJECT)
    exploded = explosion_step(loss_series(db, run.id)) is not None
    return dataclasses.replace(spec, kind=DIVERGENT if exploded else STABLE)


def run_figures(db: Database, spec: RunSpec, explosion: int | None) -> tuple[float, ...]:
    """Before the run exploded (if it did): its largest attention logit, the most that logit
    grew while above the level, as the default ``attention_logits`` measures it, and the largest
    rise of the smoothed loss (EMA 0.9) above its running minimum, as ``loss_spike`` does."""
    run = run_store.find_run(db, spec.name, project=PROJECT)
    end = explosion if explosion is not None else spec.steps
    attention = PREDICTORS["attention_logits"]
    key, memory, tops, growths = attention.params["key"], {}, [], []
    for p in stats.scalar_series(db, run.id, keys=[key]):
        if p.step >= end:
            break
        for v in attention.fn(Observation(p.step, {key: p.value}), memory, attention.params):
            tops.append(p.value)
            if p.value > attention.params["max_logit"] and v.details["growth"] is not None:
                growths.append(v.details["growth"])
    spike, memory, rise = PREDICTORS["loss_spike"], {}, 0.0
    for step, loss in enumerate(loss_series(db, run.id)[:end]):
        for v in spike.fn(Observation(step, {"loss": loss}), memory, spike.params):
            rise = max(rise, v.details.get("ema", 0.0) - v.details.get("min", 0.0))
    return max(tops, default=math.nan), max(growths, default=math.nan), rise


def fired_anywhere(scores: dict[str, Score]) -> dict[str, Score]:
    """The scores of sources that fired on at least one run."""
    return {n: s for n, s in scores.items() if any(o.first is not None for o in s.outcomes)}


def _g(value: float, spec: str, unit: str = "") -> str:
    return "–" if math.isnan(value) else f"{value:{spec}}{unit}"


def section(scores: dict, rules: dict, figures: dict) -> str:
    """The docs section: what was trained, and both rule sets' tables."""
    families = "\n".join(
        f"| `{f.base}` | `fresh-{f.short}-PEAK-sSEED` | {', '.join(f'{p:g}' for p in f.peaks)} |"
        for f in FAMILIES
    )
    growth_steps = PREDICTORS["attention_logits"].params["growth_steps"]
    level = PREDICTORS["attention_logits"].params["max_logit"]
    rows = "\n".join(
        f"| {name} | {_g(top, '.4g')} | {_g(growth, '.3g', '×')} | {rise:.2f} |"
        for name, (top, growth, rise) in figures.items()
    )
    return f"""
Every rule set above was tuned on the suite's recordings. Here three of the suite's runs are
trained again at seeds {" and ".join(map(str, SEEDS))} (the suite used 0 and 1) and at several
peak learning rates: runs that no rule was tuned on, trained each time the command runs (not
recorded), each {EXTRA_STEPS} steps longer than the suite's run, at the peak. A run is
*divergent* if it exploded, by the suite's definition, else *stable*. Reproduce:
`python -m bench.prediction.fresh` (7 minutes here).

| suite run | fresh runs | peaks |
|---|---|---|
{families}

{summary(scores)}

{per_run(scores)}

What they show (the figures in this paragraph are from the run of 2026-11-29 on this project's
2-core AMD EPYC; another CPU rounds differently and its runs drift):

- Whether a run explodes depends on the seed as much as on the peak. On the q/k/v ramp at 0.3,
  seed 3 explodes (as seed 0 did in the suite) and seed 2 trains on for 650 steps; seed 2
  explodes only at 1.0. The GPT learning-rate ramp explodes at 0.1 and trains on at 0.06 and
  0.03; the SGD MLP explodes at 1.0 and 3.0 and trains on at 0.3, both seeds alike.
- The **default set warns on 8 of the 10 explosions**, median lead 60.5 steps; it is late on two
  SGD MLPs (13 and 23 steps after). The eager set warns on 9, median lead 57.
- The **eager set rings on 13 of the 14 runs that did not explode**, every one but
  `fresh-lr-0.03-s2`. Three of them were healthy, their smoothed loss 0.11–0.18 nat off its
  minimum. The attention logit's level alone rang on all eight q/k/v runs and on three of the
  four lr runs that did not explode.
- The **default set rings on 8 of the 14**:
  - four q/k/v runs and the two SGD MLPs at 0.3, whose smoothed loss went on to climb 0.49–0.84
    nat and stayed there without exploding. At the first alert it was 0.01–0.17 nat up on the
    q/k/v runs, and 0.46–0.56 on the MLPs, whose ramp was reaching its peak. Stable by the
    suite's definition, but runs a person would want to look at.
  - two GPT lr runs at 0.06 whose loss rose 0.25 nat at most (`diverging` at steps 320 and
    350). Those are false alarms by any reading.
  - It is silent on the other six (their loss up 0.11–0.45 nat).
- The attention growth rule's margin did not hold. On the suite no stable run's logit grew more
  than 6.2× in 50 steps. Here four q/k/v runs that did not explode grew 12.3–21.7×, as much as
  the four that did (16.2–50.2×). What the rule buys is silence on the runs that keep their
  loss.

The sent rules that fired on any of these runs, alone:

{per_run(rules)}

Before any explosion: the largest attention logit, its largest growth in {growth_steps} steps
while above {level:g}, and the largest rise of the smoothed loss (EMA 0.9) above its running minimum:

| run | largest attention logit | its largest growth | loss rise (nat) |
|---|---|---|---|
{rows}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.prediction.fresh", description=__doc__)
    parser.add_argument("--no-write", action="store_true", help="do not update the docs")
    parser.add_argument("--db", help="database URL to keep the runs in (reused when present)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(args.db or f"sqlite:///{Path(tmp) / 'fresh.db'}")
        db.ensure_schema()
        runs = []
        for spec in fresh_runs():
            runs.append(train_and_classify(spec, db))
            print(f"{spec.name}: {runs[-1].kind}", file=sys.stderr, flush=True)
        configs = {"default": Config(), "eager": parse_config({"predictors": EAGER})}
        sets = {DEFAULT_SET: "default", EAGER_SET: "eager"}
        sources = {name: (label, sent_rules(configs[label])) for name, label in sets.items()}
        for label in sets.values():
            for rule in sorted(sent_rules(configs[label])):
                sources[f"{label}: {rule}"] = (label, {rule})
        scores = score_suite(db, runs, configs, sources)
        explosions = {o.run: o.explosion for o in scores[DEFAULT_SET].outcomes}
        figures = {r.name: run_figures(db, r, explosions[r.name]) for r in runs}
    sets_scores = {name: scores.pop(name) for name in sets}
    body = section(sets_scores, fired_anywhere(scores), figures)
    print(body)
    if not args.no_write:
        from bench.common import write_section

        write_section(TITLE, body)
        print("(written to docs/benchmarks.md)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
