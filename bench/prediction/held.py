"""Are the suite's stable runs stable? Each trained again with its last learning rate held longer.

A stable run is scored over its recorded steps: an alert on it is a false alarm. That is only
fair if the run would have trained on. A ramp that ends at its peak on its last step says
nothing about the peak itself, so this command trains every stable run of the suite again (not
recorded, no collector) with its schedule's last learning rate held ``HOLD`` more steps, and
prints whether and where it explodes (the suite's definition) and how far its loss drifted
above the best of its recorded steps (20-step means).

python -m bench.prediction.held              # about 2 minutes on one thread, writes the docs
python -m bench.prediction.held --no-write   # print only
python -m bench.prediction.held --fresh fresh-qkv-0.2-s2,fresh-lr-0.06-s3   # fresh runs, print only
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import sys

from bench.common import command_parser, emit
from bench.prediction.fresh import fresh_runs
from bench.prediction.runs import STABLE, SUITE, RunSpec, train
from tripwire.demo_training import explosion_step

TITLE = "Prediction: stable runs held longer"
HOLD = 400
MEAN_OF = 20


def last_lr(spec: RunSpec) -> str:
    """The learning rate (or rates) the run ends on, and so keeps while held."""
    rates = [f"{spec.schedule.at(spec.steps - 1):.3g}"]
    if spec.focus:
        rates.append(f"{spec.focus} {spec.focus_schedule.at(spec.steps - 1):.3g}")
    return ", ".join(rates)


def hold(spec: RunSpec, extra: int = HOLD) -> tuple[int | None, float]:
    """Train ``spec`` ``extra`` steps longer; its explosion step (or None) and the largest
    finite 20-step mean loss after its recorded steps minus the lowest one within them."""
    losses = train(dataclasses.replace(spec, steps=spec.steps + extra))
    means = [
        statistics.fmean(losses[i : i + MEAN_OF])
        for i in range(0, len(losses) - MEAN_OF + 1, MEAN_OF)
    ]
    recorded = spec.steps // MEAN_OF
    after = [m for m in means[recorded:] if math.isfinite(m)]
    drift = max(after, default=math.nan) - min(means[:recorded])
    return explosion_step(losses), drift


def table(rows: list[tuple[RunSpec, int | None, float]]) -> str:
    """One row per held run: its length, the rate it keeps, whether it explodes, its drift."""
    lines = "\n".join(
        f"| {spec.name} | {spec.steps} | {last_lr(spec)} | "
        f"{'trains on' if at is None else f'**explodes at {at}**'} | "
        f"{'–' if math.isnan(drift) else f'{drift:+.2f}'} |"
        for spec, at, drift in rows
    )
    return f"""| run | recorded steps | last learning rate (held) | held {HOLD} more steps | loss drift |
|---|---|---|---|---|
{lines}"""


def section(rows: list[tuple[RunSpec, int | None, float]]) -> str:
    return f"""
Every stable run of the suite trained again with the learning rate it ends on held {HOLD} more
steps (same seed, not recorded). Reproduce: `python -m bench.prediction.held`. *Loss drift*:
the highest finite {MEAN_OF}-step mean loss after the recorded steps minus the lowest one within
them (nats).

{table(rows)}

Until 2026-11-29 `mlp-sgd-safe` ramped to 0.3: held at the 0.295 it ended on, it exploded at
step 592 (this command, on the Intel Xeon of that day), a divergent run cut short at step 400.
It was replaced by the ramp to 0.2 above ([the suite](#the-suite)). The table is the Xeon's. On
an AMD EPYC (family 25, model 1) in a later session all 11 train on as well, their drifts within
0.07 nat of these, and the old ramp to 0.3 explodes at step 382, inside its 400 steps.
"""


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("bench.prediction.held", __doc__)
    parser.add_argument("--no-write", action="store_true", help="do not update the docs")
    parser.add_argument(
        "--fresh",
        metavar="NAMES",
        help="hold these runs of bench.prediction.fresh instead (print only)",
    )
    args = parser.parse_args(argv)
    if args.fresh:
        names = args.fresh.split(",")
        runs = [r for r in fresh_runs() if r.name in names]
        if len(runs) != len(names):
            parser.error(f"not fresh runs: {sorted(set(names) - {r.name for r in runs})}")
    else:
        runs = [s for s in SUITE if s.kind == STABLE]
    rows = []
    for spec in runs:
        at, drift = hold(spec)
        print(f"{spec.name}: {'trains on' if at is None else at}", file=sys.stderr, flush=True)
        rows.append((spec, at, drift))
    body = table(rows) if args.fresh else section(rows)
    emit(TITLE, body, write=not args.no_write and not args.fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
