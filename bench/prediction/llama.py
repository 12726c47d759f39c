"""The shipped rules on an architecture none of them was tuned on: a Llama-style transformer.

Every rule was chosen on the suite's GPT and MLP. These runs train transformers'
``LlamaForCausalLM`` at the suite GPT's size (``runs.LLAMA_SHAPE``: RMSNorm, SwiGLU, rotary
positions, separate q/k/v projections, no qk-norm) on the same text with AdamW, in two of the
suite's mechanisms: the whole model's learning rate ramped past the edge after warm-up (``lr``,
as ``gpt-lr-ramp``) and only the attention projections' (``attn``, as ``gpt-qkv-ramp``), each
at four peaks and two seeds, 600 steps. The loop logs the loss and the learning rate; the
collector measures the largest attention logit (``collector.attention``) and the output
``log Z`` by itself, at its defaults. The default set is also scored without
``attention_logits``: what a user gets whose model's attention the collector cannot measure,
or who turns it off. What a run is, is what
it did: *divergent* if it exploded (the suite's definition), else *stable*. Not recorded: the
command trains them each time.

python -m bench.prediction.llama              # about 7 minutes on one thread
python -m bench.prediction.llama --no-write   # print only
"""

from __future__ import annotations

import logging
import math
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from alerts.config import Config
from bench.common import command_parser, emit, machine
from bench.prediction.__main__ import (
    ALL_ENABLED,
    DEFAULT_SET,
    EAGER_SET,
    replayable_rules,
    sent_rules,
)
from bench.prediction.calibrated import score_calibrated_on
from bench.prediction.evaluate import RunOutcome, Score, loss_series, score_suite
from bench.prediction.fresh import rule_sets, run_figures, train_all
from bench.prediction.held import HOLD, hold
from bench.prediction.record import PROJECT
from bench.prediction.report import per_run, summary
from bench.prediction.runs import DIVERGENT, STABLE, RunSpec, Schedule
from storage import runs as run_store
from storage.db import Database

TITLE = "Prediction on a Llama-style model"
WITHOUT_LOGIT = "default rule set, no attention logit"
FAMILIES = {
    # name: (parameters whose learning rate ramps: None for all, the peaks)
    "lr": (None, (0.03, 0.05, 0.1, 0.2)),
    "attn": ("self_attn", (0.03, 0.1, 0.3, 1.0)),
}
SEEDS = (2, 3)
STEPS = 600
LR = 3e-3
HEALTHY_PEAK = 0.03
CALIBRATED = f"every rule, calibrated on the runs at peak {HEALTHY_PEAK:g}"


def llama_runs() -> list[RunSpec]:
    """Every family at every peak and seed (kind decided after training)."""
    runs = []
    for family, (focus, peaks) in FAMILIES.items():
        for peak in peaks:
            for seed in SEEDS:
                ramp = Schedule(LR, ramp_start=200 if focus is None else 150, peak=peak)
                runs.append(
                    RunSpec(
                        f"llama-{family}-{peak:g}-s{seed}",
                        STABLE,
                        "llama",
                        "lr-edge" if focus is None else "attn-logits",
                        ramp if focus is None else Schedule(LR),
                        steps=STEPS,
                        seed=seed,
                        opt={"weight_decay": 0.1},
                        focus=focus,
                        focus_schedule=None if focus is None else ramp,
                    )
                )
    return runs


def sources(configs: dict[str, Config]) -> dict[str, tuple[str, set[str]]]:
    """The default and eager rule sets, the default set without ``attention_logits``, each rule
    the default set sends, and every enabled rule with ``info`` included."""
    out = {
        DEFAULT_SET: ("default", sent_rules(configs["default"])),
        EAGER_SET: ("eager", sent_rules(configs["eager"])),
    }
    out[WITHOUT_LOGIT] = ("default", sent_rules(configs["default"]) - {"attention_logits"})
    for rule in sorted(sent_rules(configs["default"])):
        out[rule] = ("default", {rule})
    out[ALL_ENABLED] = ("default", set(replayable_rules(configs["default"])))
    return out


def _range(values: list[float], spec: str = ".2f") -> str:
    return "–" if not values else f"{min(values):{spec}}–{max(values):{spec}}"


def _range_of(values: dict[str, float], names: list[str]) -> str:
    """The range of ``values`` of the runs ``names``, to the unit."""
    return _range([values[n] for n in names if math.isfinite(values[n])], ".0f")


def _steps(lead: float | None) -> str:
    return "–" if lead is None else f"{lead:g}"


def end_gap(losses: list[float], tail: int = 50) -> float:
    """How far the mean of the last ``tail`` losses sits above the lowest smoothed loss (EMA
    0.9, from step 50 on): what a run that did not explode kept of its climb.

    >>> round(end_gap([3.0] * 60 + [2.0] * 100 + [2.5] * 50), 2)
    0.5
    """
    ema, lowest = None, math.inf
    for step, loss in enumerate(losses):
        ema = loss if ema is None else 0.9 * ema + 0.1 * loss
        if step >= 50:
            lowest = min(lowest, ema)
    return statistics.fmean(losses[-tail:]) - lowest


def healthy(runs: list[RunSpec]) -> list[RunSpec]:
    """The runs at the lowest peak: what a team would mark healthy before pushing further."""
    return [r for r in runs if r.kind == STABLE and peak_of(r) == HEALTHY_PEAK]


def peak_of(spec: RunSpec) -> float:
    """The peak learning rate of the run's ramp (of the attention projections', if focused)."""
    return (spec.focus_schedule or spec.schedule).peak


def _run_row(
    o: RunOutcome,
    figures: tuple[float, float, float],
    gap: float,
    held: tuple[int | None, float] | None,
) -> str:
    """One run's row of the section's first per-run table."""
    top, growth, rise = figures
    exploded = o.explosion is not None
    cells = [
        o.run,
        o.kind,
        o.explosion if exploded else "–",
        f"{top:.0f}",
        "–" if math.isnan(growth) else f"{growth:.1f}×",
        f"{rise:.2f}",
        "–" if exploded else f"{gap:.2f}",
        o.verdict,
        "–" if held is None else _held(*held),
    ]
    return "| " + " | ".join(map(str, cells)) + " |"


def _held(at: int | None, drift: float) -> str:
    return f"**explodes at {at}**" if at is not None else f"trains on ({drift:+.2f})"


def section(
    scores: dict[str, Score],
    calibrated: Score,
    figures: dict[str, tuple[float, float, float]],
    gaps: dict[str, float],
    held: dict[str, tuple[int | None, float]],
) -> str:
    """The section: the runs, the tables, and what the default set did, from ``scores``, the
    ``calibrated`` score, each run's :func:`bench.prediction.fresh.run_figures` (its largest
    attention logit, that logit's growth and its smoothed loss's rise, before any explosion),
    for runs that did not explode its :func:`end_gap` (``gaps``), and for those the default set
    rang on, :func:`bench.prediction.held.hold`'s verdict (``held``)."""
    runs = scores[DEFAULT_SET].outcomes
    exploded = [o for o in runs if o.explosion is not None]
    n_healthy = len(runs) - len(calibrated.outcomes)
    default, eager = scores[DEFAULT_SET], scores[EAGER_SET]
    tops = {name: top for name, (top, _, _) in figures.items()}
    rises = {name: rise for name, (_, _, rise) in figures.items()}
    level = scores["attention_logits"]
    rang = [rises[o.run] for o in default.of(STABLE) if o.verdict == "false alarm"]
    quiet = [rises[o.run] for o in default.of(STABLE) if o.verdict == "quiet"]
    before = [rises[o.run] for o in exploded]
    kept = [gaps[o.run] for o in default.of(STABLE) if o.verdict == "false alarm"]
    rise_rows = "\n".join(_run_row(o, figures[o.run], gaps[o.run], held.get(o.run)) for o in runs)
    exploded_later = [name for name, (at, _) in held.items() if at is not None]
    drifts = [drift for at, drift in held.values() if at is None]
    return f"""
Every rule was chosen on the GPT and MLP runs above. {len(runs)} runs of transformers'
`LlamaForCausalLM` at the suite GPT's size (2 layers, d=64, 4 heads, SwiGLU 172, RMSNorm,
rotary positions, separate q/k/v projections, no qk-norm), made from its config (nothing
downloaded), trained on the same text with AdamW (lr {LR:g}, weight decay 0.1), {STEPS} steps
at seeds {" and ".join(map(str, SEEDS))}: `llama-lr-*` ramps the whole model's learning rate
from step 200 to the peak in its name over 150 steps (as `gpt-lr-ramp`), `llama-attn-*` only
the attention projections', from step 150 (as `gpt-qkv-ramp`). What a run is, is what it did:
{len(exploded)} exploded (the suite's definition), {len(runs) - len(exploded)} did not. The loop
logs the loss and the learning rate; the collector, at its defaults, measures the largest
attention logit by itself (`collector.attention`: each attention module's `q_proj` and
`k_proj` outputs with the rotary embedding, tested against transformers' eager kernel) and the
output `log Z`. The row *{WITHOUT_LOGIT}* is what a user gets whose model's attention the
collector cannot measure, or who turns it off (`attention_logits=False`). Measured on {machine()}. Reproduce:
`python -m bench.prediction.llama` (about 7 minutes on one thread).

Out of sample and on an architecture of its own, the default rule set warned on
{default.warned} of {len(exploded)} explosions at least 5 steps ahead (median lead
{_steps(default.median_lead)} steps) and rang on **{default.false_alarms} of {len(default.of(STABLE))}
runs that did not explode**; the eager set warned on {eager.warned} (median lead
{_steps(eager.median_lead)}) and rang on {eager.false_alarms}. The runs it rang on were not calm: the
loss, smoothed as `loss_spike` smooths it (EMA 0.9), rose {_range(rang)} nat above its running
minimum on them, and {_range(quiet)} on the runs it left alone; before their explosions the
divergent runs' rose {_range(before)}. Past the edge this model's training degrades by degrees
rather than all at once: the runs it rang on climbed without meeting the explosion definition
(1 nat above the best loss, held), and over their last 50 steps their loss still sat
{_range(kept)} nat above their best. Whether such a run deserves a page is the definition's
call; by it, these are false alarms. Trained again with their last learning rates held
{HOLD} steps longer (`bench.prediction.held`), {len(held) - len(exploded_later)} of the
{len(held)} trained on{"" if not exploded_later else " (" + ", ".join(exploded_later) + " exploded)"};
the highest 20-step mean loss of their extra steps sat {_range(drifts)} nat above the lowest
of their first {STEPS}. The zero false alarms of the tables above are in-sample;
here, as on the fresh GPT and MLP runs, warnings come with alarms on runs that came close.

The attention logit does not carry over from the GPT. Its largest value passed 50 on every run,
{_range_of(tops, [o.run for o in default.of(STABLE)])} on the runs that did not explode and
{_range_of(tops, [o.run for o in exploded])} on the others before they did, so the eager set's
level alone rang on {eager.false_alarms} of {len(eager.of(STABLE))}. The default's growth
condition (tenfold in 50 steps) warned on {level.warned} of {len(exploded)} explosions and rang on
{level.false_alarms} of {len(level.of(STABLE))} runs that did not explode; it adds nothing to the
default set here (the same {default.warned} warned, the same false alarms, as the row without it
shows).

**Calibrated on the model's own healthy runs.** A team with healthy runs of this model would
run `tripwire calibrate` on them. Calibrated on the {n_healthy} runs at peak {HEALTHY_PEAK:g}
(every calibratable rule on, each threshold a 25 % margin over what the healthy runs reached,
the command's default) and scored on the other {len(calibrated.outcomes)}, every rule together
warned on {calibrated.warned} of {len(calibrated.of(DIVERGENT))} explosions (median lead
{_steps(calibrated.median_lead)} steps) and rang on {calibrated.false_alarms} of
{len(calibrated.of(STABLE))} runs that did not explode: a model's own healthy runs at a lower
learning rate teach the rules what calm looks like, not where the edge is.

{summary({CALIBRATED: calibrated})}

| run | kind | explodes at | largest attention logit (before any explosion) | its most growth in 50 steps, above 50 | smoothed loss's largest rise above its minimum (before any explosion), nat | its last 50 steps' mean loss above its lowest smoothed loss, nat | default rule set | held {HOLD} steps longer (drift above its best, nat) |
|---|---|---|---|---|---|---|---|---|
{rise_rows}

{summary(scores)}

{per_run(scores)}
"""


def _run_id(db: Database, spec: RunSpec) -> int:
    return run_store.find_run(db, spec.name, project=PROJECT).id


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("bench.prediction.llama", __doc__)
    parser.add_argument("--no-write", action="store_true", help="do not update the docs")
    parser.add_argument("--db", help="database URL to keep the runs in (reused when present)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)  # as every run trains (runs.train), reused or not
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(args.db or f"sqlite:///{Path(tmp) / 'llama.db'}")
        db.ensure_schema()
        runs = train_all(llama_runs(), db)
        configs = rule_sets()
        scores = score_suite(db, runs, configs, sources(configs))
        calm = healthy(runs)
        scored = [r for r in runs if r not in calm]
        calibrated = score_calibrated_on(db, calm, scored, CALIBRATED)
        explosions = {o.run: o.explosion for o in scores[DEFAULT_SET].outcomes}
        figures = {r.name: run_figures(db, r, explosions[r.name]) for r in runs}
        gaps = {r.name: end_gap(loss_series(db, _run_id(db, r))) for r in runs}
        rang = {o.run for o in scores[DEFAULT_SET].of(STABLE) if o.verdict == "false alarm"}
        held = {r.name: hold(r) for r in runs if r.name in rang}
    emit(TITLE, section(scores, calibrated, figures, gaps, held), write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
