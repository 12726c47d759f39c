"""Does the loss itself flicker more before an explosion? (explored, not a predictor)

A generic early-warning sign of a system nearing a tipping point is rising variance ("critical
slowing down"). ``python -m bench.prediction.loss_variance`` measures it on the recorded runs:
the standard deviation of the one-step loss surprise (the loss minus its EMA, 0.9, up to the
step before) over a window of 30 steps, divided by the lowest such value since step 60. It
prints, per run, the largest ratio from step 100 up to 5 steps before the explosion (divergent),
the control's change (control) or the end (stable), and where it was reached. A usable signal
would put every divergent run above every stable one of its architecture.

It also prints the other classic sign, a rising lag-1 autocorrelation of the same surprise over
the same window (mean removed), and where it was largest.
"""

from __future__ import annotations

import math
import statistics

from bench.prediction.record import load_export
from bench.prediction.runs import CONTROL, DIVERGENT, SUITE, RunSpec
from tripwire.demo_training import explosion_step

WINDOW = 30
BASELINE_FROM = 60
SCORED_FROM = 100


def losses(spec: RunSpec) -> list[float]:
    """Every step's loss of the recorded run (NaN where a step is missing)."""
    data = load_export(spec)
    if data is None:
        raise SystemExit(f"{spec.name} is not recorded: run python -m bench.prediction first")
    by_step = {step: value for step, key, value in data["scalars"] if key == "loss"}
    return [by_step.get(step, math.nan) for step in range(spec.steps)]


def flicker(loss: list[float]) -> list[float]:
    """Per step, the windowed spread of the loss surprise over its lowest earlier value (NaN
    before there is one)."""
    surprise, ema = [], loss[0]
    for value in loss:
        surprise.append(value - ema)
        if math.isfinite(value):
            ema = 0.9 * ema + 0.1 * value
    out, lowest = [], math.inf
    for step in range(len(loss)):
        window = surprise[max(0, step - WINDOW + 1) : step + 1]
        if step < BASELINE_FROM or len(window) < WINDOW or not all(map(math.isfinite, window)):
            out.append(math.nan)
            continue
        spread = statistics.pstdev(window)
        lowest = min(lowest, spread)
        out.append(spread / lowest if lowest > 0 else math.nan)
    return out


def autocorrelation(loss: list[float]) -> list[float]:
    """Per step, the lag-1 autocorrelation of the loss surprise over the last ``WINDOW`` steps
    (NaN where the window is not whole and finite, or flat)."""
    surprise, ema = [], loss[0]
    for value in loss:
        surprise.append(value - ema)
        if math.isfinite(value):
            ema = 0.9 * ema + 0.1 * value
    out = []
    for step in range(len(loss)):
        window = surprise[max(0, step - WINDOW + 1) : step + 1]
        if len(window) < WINDOW or not all(map(math.isfinite, window)):
            out.append(math.nan)
            continue
        mean = statistics.fmean(window)
        d = [x - mean for x in window]
        spread = sum(x * x for x in d)
        lagged = sum(a * b for a, b in zip(d[:-1], d[1:], strict=True))
        out.append(lagged / spread if spread > 0 else math.nan)
    return out


def scored_until(spec: RunSpec, loss: list[float]) -> int:
    """The last step whose flicker counts: 5 before the explosion, the control's change, or the
    end."""
    if spec.kind == DIVERGENT:
        return explosion_step(loss) - 5
    if spec.kind == CONTROL:
        return spec.change_step - 1
    return len(loss) - 1


def main() -> None:
    print(
        f"{'run':22s} {'kind':9s} {'arch':4s}  largest ratio  at step  largest autocorr.  at step"
    )
    for spec in SUITE:
        loss = losses(spec)
        last = scored_until(spec, loss)
        peaks = []
        for series in (flicker(loss), autocorrelation(loss)):
            scored = series[SCORED_FROM : last + 1]
            peaks.append(
                max((r, SCORED_FROM + i) for i, r in enumerate(scored) if math.isfinite(r))
            )
        (ratio, at), (corr, corr_at) = peaks
        print(
            f"{spec.name:22s} {spec.kind:9s} {spec.arch:4s}  {ratio:13.2f}  {at:7d}"
            f"  {corr:17.3f}  {corr_at:7d}"
        )


if __name__ == "__main__":
    main()
