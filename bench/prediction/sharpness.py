"""Does the loss's curvature reach the optimizer's stability limit before an explosion? (explored,
not a predictor)

The textbook account of a learning rate past the edge: gradient descent is stable while the
top eigenvalue of the loss's Hessian, ``λmax``, stays under ``2/lr``; SGD with momentum ``β``
under ``2(1 + β)/lr``; Adam under ``(2 + 2β1)/((1 − β1)·lr)`` for the Hessian preconditioned by
``1/(√v̂ + ε)`` (Cohen et al., 2021 and 2022).
``python -m bench.prediction.sharpness [RUN ... | all]`` trains each run again (the suite's SGD
runs on the MLP and their twins by default, about 7 minutes; ``all``: the whole suite, about 1.5
hours on one core) and, every 10 steps from step 100, measures the *stability ratio*:
``λmax(D^½ H D^½)`` over that limit, where ``D`` is each parameter's step size (the learning
rate, or ``lr/(√v̂ + ε)`` under Adam) and ``H`` the Hessian of the loss on a fixed probe batch of
1024 examples (8 of the run's own batches), by 30 power iterations of Hessian-vector products.
Above 1, a step of that size grows along the top direction instead of shrinking.

The training itself is the suite's: the probe batch comes from a second copy of the data stream
and the power iteration draws from its own generator, so the loss, and the explosion step,
are those of the recording. It costs 30 double-backward passes per check, far more than the
collector's budget; it is measured here to see whether the signal is worth that. Each run's
lines end with the ratio judged as an alert would be (:func:`judge`); the last line sums them up.
"""

from __future__ import annotations

import math

import torch

from alerts.backtest import BacktestAlert
from alerts.engine import DEFAULT_RESOLVE_AFTER
from bench.common import command_parser
from bench.prediction.evaluate import MIN_LEAD, RunOutcome, Score, outcome
from bench.prediction.runs import (
    BY_NAME,
    CONTROL,
    DIVERGENT,
    STABLE,
    SUITE,
    RunSpec,
    build,
    objective,
    train,
)
from tripwire.demo_training import explosion_step

EVERY = 10
FROM_STEP = 100
PROBE_BATCHES = 8
ITERATIONS = 30
DEFAULT_RUNS = [
    "mlp-sgd-ramp",
    "mlp-sgd-ramp-s1",
    "mlp-sgd-layernorm",
    "mlp-sgd-const",
    "mlp-sgd-const-hi",
    "mlp-sgd-safe",
    "mlp-sgd-const-safe",
    "mlp-sgd-hold",
]


def step_sizes(opt: torch.optim.Optimizer) -> dict[torch.Tensor, torch.Tensor]:
    """Each parameter's elementwise step size ``D``: the learning rate, or under Adam(W) the
    learning rate over ``√v̂ + ε`` (the learning rate alone before Adam's first step)."""
    sizes = {}
    for group in opt.param_groups:
        for p in group["params"]:
            state = opt.state.get(p, {})
            if "exp_avg_sq" in state:
                beta2 = group["betas"][1]
                v_hat = state["exp_avg_sq"] / (1 - beta2 ** float(state["step"]))
                sizes[p] = group["lr"] / (v_hat.sqrt() + group["eps"])
            else:
                sizes[p] = torch.full_like(p, group["lr"])
    return sizes


def stability_limit(opt: torch.optim.Optimizer) -> float:
    """The largest stable ``λmax(D^½ H D^½)`` for the optimizer's momentum on a quadratic.

    >>> model = torch.nn.Linear(2, 1)
    >>> stability_limit(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    3.8
    >>> round(stability_limit(torch.optim.Adam(model.parameters())), 6)
    38.0
    """
    group = opt.param_groups[0]
    if "betas" in group:
        beta1 = group["betas"][0]
        return (2 + 2 * beta1) / (1 - beta1)
    return 2 * (1 + group.get("momentum", 0.0))


def top_eigenvalue(
    loss: torch.Tensor,
    params: list[torch.Tensor],
    sizes: dict[torch.Tensor, torch.Tensor],
    iterations: int = ITERATIONS,
    generator: torch.Generator | None = None,
) -> float:
    """``λmax(D^½ H D^½)`` of ``loss`` by power iteration (the eigenvalue of largest magnitude;
    NaN when the loss or a Hessian-vector product is not finite)."""
    if not torch.isfinite(loss):
        return math.nan
    grads = torch.autograd.grad(loss, params, create_graph=True)
    roots = [sizes[p].sqrt() for p in params]
    v = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]
    eigenvalue = math.nan
    for _ in range(iterations):
        norm = math.sqrt(sum(float((x * x).sum()) for x in v))
        if not math.isfinite(norm) or norm == 0:
            return math.nan
        v = [x / norm for x in v]
        hvp = torch.autograd.grad(
            grads, params, [r * x for r, x in zip(roots, v, strict=True)], retain_graph=True
        )
        w = [r * h for r, h in zip(roots, hvp, strict=True)]
        eigenvalue = sum(float((a * b).sum()) for a, b in zip(w, v, strict=True))
        v = w
    return eigenvalue


def trace(spec: RunSpec) -> tuple[list[float], list[tuple[int, float]]]:
    """Train ``spec`` as the suite does; returns every step's loss and ``(step, ratio)`` every
    ``EVERY`` steps from ``FROM_STEP``, measured after the step's backward, before its update."""
    # build() seeds the global RNG: the probe's copy first, then train()'s reseeds it.
    _, probe_stream = build(spec)
    held = [probe_stream() for _ in range(PROBE_BATCHES)]
    probe_x, probe_y = (torch.cat(parts) for parts in zip(*held, strict=True))
    generator = torch.Generator().manual_seed(0)
    ratios: list[tuple[int, float]] = []

    def measure(step: int, model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        if step < FROM_STEP or step % EVERY:
            return
        sizes = step_sizes(opt)
        params = list(sizes)
        # The math kernel is the one attention kernel with a double backward on every build.
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
            loss = objective(spec, model, probe_x, probe_y)
            eigenvalue = top_eigenvalue(loss, params, sizes, generator=generator)
        ratios.append((step, eigenvalue / stability_limit(opt)))

    return train(spec, inspect=measure), ratios


def first_crossing(ratios: list[tuple[int, float]], until: int) -> int | None:
    """The first check step up to ``until`` whose ratio is above 1."""
    return next((step for step, ratio in ratios if step <= until and ratio > 1), None)


def as_alerts(name: str, ratios: list[tuple[int, float]]) -> list[BacktestAlert]:
    """The ratio as an alert would be: fired at a check above 1, resolved after
    ``DEFAULT_RESOLVE_AFTER`` checks in a row at or below it, as the engine resolves alerts."""
    spans: list[tuple[int, int | None]] = []
    fired, quiet = None, 0
    for step, ratio in ratios:
        if ratio > 1:
            fired, quiet = step if fired is None else fired, 0
        elif fired is not None:
            quiet += 1
            if quiet == DEFAULT_RESOLVE_AFTER:
                spans.append((fired, step))
                fired, quiet = None, 0
    if fired is not None:
        spans.append((fired, None))
    return [
        BacktestAlert(name, "", "stability_ratio", "info", at, None, "", None, at, resolved, None)
        for at, resolved in spans
    ]


def judge(spec: RunSpec, losses: list[float], ratios: list[tuple[int, float]]) -> RunOutcome:
    """The ratio's verdict on a run by the benchmark's definitions (``bench.prediction.evaluate``).

    >>> spec = BY_NAME["mlp-sgd-const"]
    >>> judge(spec, [2.0] * 300 + [50.0] * 40, [(280, 0.5), (290, 1.2), (300, 0.9)]).verdict
    'warned'
    """
    explosion = explosion_step(losses) if spec.kind == DIVERGENT else None
    return outcome(spec, explosion, as_alerts(spec.name, ratios))


def report(spec: RunSpec, losses: list[float], ratios: list[tuple[int, float]]) -> str:
    """One run's lines: explosion step, first crossing before it (or before the end), the
    highest ratio up to 5 steps before it, the verdict as an alert, and every ratio."""
    exploded = explosion_step(losses)
    until = (exploded - 5) if exploded is not None else len(losses)
    scored = [(ratio, step) for step, ratio in ratios if step <= until and math.isfinite(ratio)]
    top, at = max(scored) if scored else (math.nan, None)
    verdict = judge(spec, losses, ratios)
    said = verdict.verdict + (f" ({verdict.lead} ahead)" if verdict.lead is not None else "")
    if verdict.first is not None and verdict.verdict != "warned":
        said += f" (@{verdict.first})"
    series = " ".join(f"{step}:{ratio:.3f}" for step, ratio in ratios)
    return (
        f"{spec.name} ({spec.kind}): explodes at {exploded}; above 1 first at "
        f"{first_crossing(ratios, until)} (up to step {until}); highest {top:.2f} at {at}; "
        f"as an alert: {said}\n  {series}"
    )


def summary(outcomes: list[RunOutcome]) -> str:
    """Warned, median lead and false alarms over the runs measured."""
    score = Score("stability ratio", outcomes)
    divergent, stable = score.of(DIVERGENT), score.of(STABLE)
    return (
        f"warned >= {MIN_LEAD} ahead: {score.warned}/{len(divergent)}, median lead "
        f"{score.median_lead}; false alarms: {score.false_alarms}/{len(stable)} stable, "
        f"{score.control_false}/{len(score.of(CONTROL))} controls before the change"
    )


if __name__ == "__main__":
    parser = command_parser("bench.prediction.sharpness", __doc__)
    parser.add_argument("runs", nargs="*", metavar="RUN", help="suite runs, or all")
    names = parser.parse_args().runs or DEFAULT_RUNS
    unknown = [n for n in names if n not in BY_NAME and names != ["all"]]
    if unknown:
        parser.error(f"unknown runs {', '.join(unknown)}; valid: all, {', '.join(sorted(BY_NAME))}")
    outcomes = []
    for run in [spec.name for spec in SUITE] if names == ["all"] else names:
        spec = BY_NAME[run]
        losses, ratios = trace(spec)
        outcomes.append(judge(spec, losses, ratios))
        print(report(spec, losses, ratios), flush=True)
    print(summary(outcomes))
