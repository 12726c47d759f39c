"""The "Prediction" section of docs/benchmarks.md, built from the scores."""

from __future__ import annotations

from bench.prediction.report import per_run, summary
from bench.prediction.runs import SUITE, RunSpec


def _knobs(spec: RunSpec) -> str:
    s = spec.schedule
    lr = f"{spec.optimizer} lr {s.lr:g}"
    if s.ramp_start is not None:
        lr += f", ramp ×{s.peak / s.lr:.3g} to {s.peak:g} over steps {s.ramp_start}–{s.ramp_start + s.ramp_steps}"
    if s.jump_step is not None:
        lr += f", ×{s.jump:g} at step {s.jump_step}"
    extra = [f"{k}={v}" for k, v in {**spec.opt, **spec.model}.items() if k != "momentum"]
    return "; ".join([lr, *extra, f"seed {spec.seed}", f"{spec.steps} steps"])


def suite_table(explosions: dict[str, int | None]) -> str:
    rows = ["| run | kind | arch | mechanism | knobs | explodes at |", "|---|---|---|---|---|---|"]
    for spec in SUITE:
        e = explosions.get(spec.name)
        rows.append(
            f"| {spec.name} | {spec.kind} | {spec.arch} | {spec.mechanism} | {_knobs(spec)} | "
            f"{'–' if e is None else e} |"
        )
    return "\n".join(rows)


def section(defaults, calibrated, explored, explosions, images: list[str]) -> str:  # noqa: ANN001
    figs = "\n\n".join(f"![{p}](img/{p})" for p in images)
    return f"""
Does an alert fire before the loss explodes, how early, and how often does it cry wolf?
Reproduce: `python -m bench.prediction` (replays the recorded runs in
`bench/prediction/recorded/`; `--retrain` trains them again, about 15 minutes on one CPU thread;
`--no-write` prints without touching this file).

### The suite

{len(SUITE)} real training runs recorded through `collector.watch(..., every=10)` at its defaults:
a 2-layer GPT (d=64, 4 heads, byte-level, the standard library's source) and an 8-layer ReLU MLP
(width 128, teacher task), one thread, deterministic by seed. *Divergent* runs train normally
for at least 150 steps and then explode; *stable* runs are one knob away from a divergent one (a
lower peak learning rate, or qk-norm on) and must raise nothing; the *control* multiplies the
learning rate by 10 at step 250, which nothing can foresee: alerts before it are false alarms.
`*-hold` runs keep a constant learning rate.

{suite_table(explosions)}

What the mechanisms are, honestly: every explosion here is driven by a learning rate past the
edge of stability; they differ in optimizer (AdamW, Adam, SGD with momentum), architecture,
normalisation, and in qk-norm, which is the fix that separates `gpt-attn-noqk` from its stable
twin `gpt-attn-qknorm` (attention-logit growth). Adam's ε (1e-12 vs 1e-8 vs 1e-3) and β2 made
no difference on the MLP, and bfloat16 did not destabilise it, so those mechanisms from the
issue are not in the suite.

### Definitions (applied by code, `bench/prediction/evaluate.py`)

- **Explosion step** `E`: the first step whose loss is non-finite, or exceeds the running
  minimum of the earlier losses by more than 1 nat while the median of the 20 losses from there
  does too (`tripwire.demo_training.explosion_step`).
- An alert's step is the training step whose data made it fire (the backtest of
  `tripwire evaluate`, same engine, same persistence `for_checks`).
- Divergent run: **warned** if the first alert fired at step ≤ `E − 5` (lead `E − step`),
  **late** if later (`late (+n)`: n steps after `E`), **missed** if none. Stable run: any alert
  is a **false alarm** (`FALSE @step`). Control: an alert before step 250 is a false alarm;
  `quiet (@s)` means it fired at s, after the change.
- **Default rule set**: what is sent by default (severity warning or critical).

### Results with the shipped defaults

{summary(defaults)}

{per_run(defaults)}

The defaults were chosen on this suite (in-sample): `diverging` and `sigma_surge` use the
loosest settings of the sweep below with no false alarm. `sa_collapse`, `weight_growth` and
`loss_spike` warn early on every divergent run but also on most stable near-edge runs, so they
ship as `info` (dashboard only). The targets of the issue (every explosion warned ≥5 steps
ahead, median lead ≥50) are **not met**: the default rule set is late on two runs and its
median lead is short.

### Calibrated per model, without tuning on the scored run

`tripwire calibrate` sets each threshold to the highest level its score held (for
`for_checks` checks) on healthy runs, plus 25 %. Here every scored run is evaluated with
thresholds learned from the *stable runs of the same architecture*, leaving out the scored run
and every run one knob away from it (its twin); no divergent run is ever used.

{summary(calibrated)}

{per_run(calibrated)}

### Formulations explored (each alone)

SA formulations: the level of `D` against the layer's baseline (`sa_collapse`), and
`sa_shift`: a layer's mean |SA|, `D`, v1 rotation speed (`v_drift`) or max activation jumping
above its own EMA history, in at least 30 % of layers at once. Spectral: `weight_growth` (one
layer's σ1 rate), `sigma_surge` (σ1 rate in many layers at once), `diverging` (σ1 surge while
the smoothed loss climbs off its minimum). Non-SA: `grad_norm_spike`, `loss_spike`. Inputs
centred per batch were not explored (the collector does not record them).

{summary(explored)}

**What SA does here.** The SA level (`sa_collapse`) warns on every divergent run with the
longest median lead, but it rings on 5 of 6 stable runs and before the control's change: after
LayerNorm and GELU, `D` is near 1 in many layers of healthy training. Stricter settings still
cry wolf. Against each layer's own history (`sa_shift`) SA rarely false-alarms but mostly
misses; `D` never moves enough. On these runs SA does not lead usefully on any mechanism once
false alarms are counted; no formulation warns on every divergent run without false alarms
(the best silent ones warn 3–4 of 7).

### Figures

{figs}
"""
