"""The cost of one check, part by part; power iteration against a full SVD; ``log()`` alone.

On a GPT of the overhead benchmark's sizes, after a few training steps (so weights, gradients
and inputs are real):

- one check broken down: arming the hooks and sampling the inputs in them, the fused norms,
  power iteration, v drift, the SA statistics, the host transfer, building rows and queueing
  them for the writer, and the whole ``Monitor`` check end to end;
- power iteration (warm-started, as on the hot path, and cold) against ``torch.linalg.svd`` on
  the model's real matrices while it trains: time per check, and the error of σ1 and v1;
- ``Monitor.log`` on a non-check step, timed over many calls.

    .venv/bin/python -m bench.check_cost                       # CPU, small and medium GPT
    .venv/bin/python -m bench.check_cost --sizes small --no-write
"""

from __future__ import annotations

import argparse
import itertools
import math
import tempfile
import time
import timeit
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bench.common import emit, fmt_ms, fmt_us, interleave_cpu, machine, median, rank_0_of_2, table
from bench.overhead import Size, build

# the parts of one check, in the order of the table
PARTS = (
    "hooks: arm + sample inputs",
    "norms (fused)",
    "power iteration + v drift, stacked by shape",
    "SA statistics, all layers at once",
    "update ratio: weight sketches",
    "host transfer",
    "rows + queue",
)
REFERENCE = (
    "power iteration + v drift, one layer at a time",
    "SA statistics, one layer at a time",
    "run_check, one layer at a time (before)",
    "run_check, stacked (now)",
    "run_check under DDP, one layer at a time (before)",
    "run_check under DDP, stacked (now)",
    "Monitor check, end to end",
)


class _Inputs:
    """Keeps the full input of every monitored layer from one forward pass; layers fed the same
    tensor (a Llama block's q/k/v) keep one, as the collector's sampler does."""

    def __init__(self, layers) -> None:
        self.x: dict[str, torch.Tensor] = {}
        self._seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # the input kept alive
        self._handles = [
            layer.module.register_forward_hook(self._hook(layer.name)) for layer in layers
        ]

    def _hook(self, name):
        def hook(module, inputs, output):  # noqa: ARG001
            x = inputs[0]
            if id(x) not in self._seen:
                self._seen[id(x)] = (x, x.detach())
            self.x[name] = self._seen[id(x)][1]

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def breakdown(size: Size, device: str, rounds: int, tmp: Path) -> tuple[dict, dict]:
    """Median seconds of each part of one check over ``rounds`` interleaved rounds, and the
    number of aten ops each part dispatches."""
    import collector
    from collector import batched, checks, norms, spectral, updates
    from collector.host import ToHost
    from storage.entities import LAYER_STATISTICS as _COLUMNS

    model, opt, x = build(size, device)
    monitor = collector.watch(
        model, run="check-cost", db=f"sqlite:///{tmp / 'cost.db'}", spool_dir=str(tmp)
    )
    layers = monitor.layers
    sampler = monitor._sampler
    for step in range(3):  # real gradients, and warm singular vectors
        loss = model(x, x)
        loss.backward()
        monitor.log(step * monitor.every, loss=loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sampler.arm()
    sampler.disarm()
    captured = _Inputs(layers)
    loss = model(x, x)
    loss.backward()
    captured.remove()
    inputs = captured.x
    state = monitor._spectral
    weights = [layer.weight for layer in layers]
    samples: dict[int, torch.Tensor] = {}  # one sample of each distinct input
    for t in inputs.values():
        if id(t) not in samples:
            gen = sampler._generators.on(t.device)
            samples[id(t)] = spectral.sample_rows(t, sampler.sample_size, gen)
    rows = {n: samples[id(t)] for n, t in inputs.items()}
    v1s = {layer.name: state.v[layer.name] for layer in layers}
    stats = {name: spectral.sa_statistics(rows[name], v1s[name]) for name in rows if name in v1s}
    per_layer = [torch.stack([torch.zeros((), device=device) for _ in _COLUMNS]) for _ in layers]
    hists = [s["sa_hist"] for s in stats.values()]
    row_dicts = [dict.fromkeys(_COLUMNS, 0.0) | {"layer": layer.name} for layer in layers]

    def hooks():
        sampler.arm()
        for layer in layers:
            handle_hook = sampler._hook_for(layer.name)
            handle_hook(layer.module, (inputs[layer.name],), None)
        sampler.take()

    def norm_part():
        norms.weight_and_grad_norms(weights)

    groups = batched.power_groups(weights)
    sampled = [layer.name for layer in layers if layer.name in rows]
    sa_rows = [rows[name] for name in sampled]
    sa_v1 = [v1s[name] for name in sampled]

    def power_stacked():
        for g in groups:
            prev = [v1s[layers[i].name] for i in g]
            sigma1, v1 = batched._spectra([weights[i] for i in g], prev)
            batched.v_drift_stack(v1, prev)

    def sa_stacked():
        batched.sa_statistics_stack(sa_rows, sa_v1)

    sketches = {layer.name: updates.sketch(layer.weight) for layer in layers}

    def update_part():
        now = [updates.sketch(layer.weight) for layer in layers]
        updates.update_ratios(now, [sketches[layer.name] for layer in layers], [10] * len(now))

    def power():
        for layer in layers:
            _, v1, _ = spectral.power_iteration(layer.weight, v1s[layer.name])
            spectral.v_drift(v1, v1s[layer.name])

    def sa():
        for name, r in rows.items():
            spectral.sa_statistics(r, v1s[name])

    def transfer():
        ToHost([torch.stack(per_layer), torch.stack(hists)]).lists()

    def queue_rows():
        out = []
        for r in row_dicts:
            row = dict(r)
            row["step"], row["wall_time"] = 0, time.time()
            out.append(row)
        monitor._writer.put("layer_stats", out)

    # A later step at each call, as in training: the update ratios compare with the last check.
    check_steps = {name: itertools.count(3 * monitor.every, monitor.every) for name in REFERENCE}

    def check_row(name: str, ranks=None, stacked: bool = True):
        """One ``run_check`` row: its own copy of the warm state (rows that shared one would
        see each other's sketches from the same step), the stacked or the per-layer path."""
        own = checks.SpectralState()
        own.v = dict(state.v)

        def run():
            batchable = checks._batchable
            if not stacked:
                checks._batchable = lambda *_: False
            try:
                checks.run_check(layers, rows, own, ranks=ranks, step=next(check_steps[name]))
            finally:
                checks._batchable = batchable

        return run

    ddp = rank_0_of_2()
    per_layer_check = check_row("run_check, one layer at a time (before)", stacked=False)
    whole_check = check_row("run_check, stacked (now)")
    ddp_per_layer_check = check_row(
        "run_check under DDP, one layer at a time (before)", ddp, stacked=False
    )
    ddp_stacked_check = check_row("run_check under DDP, stacked (now)", ddp)

    def monitor_check():
        sampler.arm()
        for layer in layers:
            sampler._hook_for(layer.name)(layer.module, (inputs[layer.name],), None)
        monitor._check(next(check_steps["Monitor check, end to end"]))

    parts = dict(
        zip(
            PARTS + REFERENCE,
            (hooks, norm_part, power_stacked, sa_stacked, update_part, transfer, queue_rows)
            + (power, sa, per_layer_check, whole_check)
            + (ddp_per_layer_check, ddp_stacked_check, monitor_check),
            strict=True,
        )
    )
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    for fn in parts.values():
        fn()
    wall, cpu = interleave_cpu(parts, rounds, sync=sync)
    ops = {name: count_ops(fn) for name, fn in parts.items()}
    monitor.close()
    # CPU time of this thread on CPU (robust on a shared machine); wall time on a GPU
    times = wall if device.startswith("cuda") else cpu
    return {name: median(t) for name, t in times.items()}, ops


class _OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        self.count += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn) -> int:
    """The aten ops one call of ``fn`` dispatches. On a GPU each is a kernel launch or a view,
    and where the work per op is small, as in a check, their number roughly sets the time."""
    with _OpCounter() as counter:
        fn()
    return counter.count


def _p95(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(0.95 * len(values)))] if values else math.nan


SVD_EVERY = 10
"""Steps between the power-iteration comparison's checks."""


def power_vs_svd(size: Size, device: str, steps: int, every: int, iters=(4, 8, 16)) -> dict:
    """Train on text for ``steps`` steps; at each check compare warm power iteration (each of
    ``iters`` iterations, each with its own warm state) against a full SVD of the same matrix."""
    from collector.layers import select_layers
    from collector.spectral import COLD_ITERS, WARM_ITERS, power_iteration
    from tripwire.corpus import TextCorpus

    iters = tuple(dict.fromkeys((WARM_ITERS, *iters)))
    model, opt, _ = build(size, device, seed=1)
    corpus, gen = TextCorpus(1_000_000), torch.Generator().manual_seed(1)
    layers = select_layers(model)
    state: dict[int, dict[str, torch.Tensor]] = {k: {} for k in iters}
    err = {k: {"sigma": [], "v": [], "t": []} for k in iters}
    t_cold, t_svd = [], []
    cuda = device.startswith("cuda")

    def clock() -> float:
        if cuda:
            torch.cuda.synchronize()
            return time.perf_counter()
        return time.thread_time()

    for step in range(steps):
        x, y = (t.to(device) for t in corpus.batch(size.batch, size.block, gen))
        model(x, y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % every:
            continue
        with torch.no_grad():
            for layer in layers:
                w = layer.weight.detach()
                t0 = clock()
                _, s, vh = torch.linalg.svd(w.float(), full_matrices=False)
                t_svd.append(clock() - t0)
                gapped = len(s) > 1 and float(s[1]) < 0.95 * float(s[0])
                for k in iters:
                    prev = state[k].get(layer.name)
                    t0 = clock()
                    sigma, v, _ = power_iteration(w, prev, iters=None if prev is None else k)
                    (t_cold if prev is None else err[k]["t"]).append(clock() - t0)
                    state[k][layer.name] = v
                    if prev is None:
                        continue
                    err[k]["sigma"].append(abs(float(sigma) - float(s[0])) / float(s[0]))
                    if gapped:  # v1 is only defined where σ1 stands apart
                        err[k]["v"].append(math.acos(min(1.0, abs(float(torch.dot(v, vh[0]))))))
    n = len(layers)
    per_check = lambda ts: sum(ts) / max(len(ts), 1) * n  # noqa: E731
    return {
        "layers": n,
        "checks": len(err[iters[0]]["sigma"]) // max(n, 1),
        "default_iters": WARM_ITERS,
        "cold_iters": COLD_ITERS,
        "cold_s": per_check(t_cold),
        "svd_s": per_check(t_svd),
        "warm": {
            k: {
                "s": per_check(e["t"]),
                "sigma_median": median(e["sigma"]),
                "sigma_p95": _p95(e["sigma"]),
                "sigma_max": max(e["sigma"], default=math.nan),
                "v_median": median(e["v"]),
                "v_p95": _p95(e["v"]),
                "v_max": max(e["v"], default=math.nan),
                "pairs": len(e["sigma"]),
                "gapped": len(e["v"]),
            }
            for k, e in err.items()
        },
    }


def log_cost(calls: int, tmp: Path) -> dict:
    """Microseconds per ``Monitor.log`` on a non-check step (loss as a tensor and as a float)."""
    import collector

    model = torch.nn.Linear(8, 8)
    out = {}
    with collector.watch(
        model, run="log-cost", db=f"sqlite:///{tmp / 'log.db'}", every=10**9, spool_dir=str(tmp)
    ) as monitor:
        loss = torch.tensor(2.5)
        model(
            torch.randn(2, 8)
        )  # step 0 is a check step, with an input to sample; the rest are not
        monitor.log(0, loss=loss, lr=1e-3)
        for label, value in (("loss tensor, lr float", loss), ("loss float, lr float", 2.5)):
            steps = iter(range(1, 10**9))
            out[label] = (
                min(
                    timeit.repeat(
                        lambda v=value, s=steps: monitor.log(next(s), loss=v, lr=1e-3),
                        number=calls,
                        repeat=3,
                    )
                )
                / calls
            )
            monitor._pending.clear()
    return out


def report(
    results: list[dict],
    logs: dict,
    device: str,
    rounds: int,
    log_calls: int,
    gpu_path: bool = False,
) -> str:
    sizes = ",".join(res["size"].name for res in results)
    parts = [
        f"Measured on {machine(device)}. Command: `python -m bench.check_cost --device {device} "
        f"--sizes {sizes}{' --gpu-path' if gpu_path else ''}`."
    ]
    for res in results:
        s, parts_s, pvs = res["size"], res["breakdown"], res["svd"]
        whole = parts_s["Monitor check, end to end"]
        rows = [
            [name, fmt_ms(sec), f"{100 * sec / whole:.0f} %", res["ops"][name]]
            for name, sec in parts_s.items()
        ]
        parts.append(
            f"**One check, {s.title}** ({pvs['layers']} linear layers, batch {s.batch} × "
            f"{s.block} tokens): median over {rounds} interleaved rounds of the calling thread's "
            "CPU time (wall time on a GPU); the parts are timed alone, so they need not add up "
            "to the whole. The rows *one layer at a time* are the path before stacking (still "
            "used where a model's weights sit on several devices), for comparison; the rows "
            "*under DDP* are rank 0 of two combining their inputs' statistics, the all-reduces "
            "left out (one process stands in). *aten ops*: the operations one call dispatches; "
            "on a GPU, where each does little work here, each "
            "is a kernel launch (or a view) and their number roughly sets the time.\n\n"
            + table(["part", "ms", "of the whole check", "aten ops"], rows)
        )
        warm_rows = [
            [
                f"power iteration, warm, {k} iterations"
                + (" (the default)" if k == pvs["default_iters"] else ""),
                fmt_ms(w["s"]),
                f"{w['sigma_median']:.1e} / {w['sigma_p95']:.1e} / {w['sigma_max']:.1e}",
                f"{w['v_median']:.1e} / {w['v_p95']:.1e} / {w['v_max']:.1e}",
            ]
            for k, w in pvs["warm"].items()
        ]
        w0 = next(iter(pvs["warm"].values()))
        parts.append(
            f"**Power iteration against `torch.linalg.svd`, {s.title}**: all {pvs['layers']} "
            f"weight matrices at {pvs['checks']} warm checks (every 10 steps) while it trains "
            f"on text with AdamW (lr 1e-3); {w0['pairs']} (layer, check) pairs, of which "
            f"{w0['gapped']} have σ2 < 0.95 σ1, where v1 is well defined and its angle is "
            "measured. Each iteration count keeps its own warm state, as the collector does. "
            "Time: CPU ms per check, all layers.\n\n"
            + table(
                [
                    "method",
                    "ms per check",
                    "σ1 rel. error median / p95 / max",
                    "v1 angle (rad) median / p95 / max",
                ],
                warm_rows
                + [
                    [
                        f"power iteration, cold ({pvs['cold_iters']} iterations)",
                        fmt_ms(pvs["cold_s"]),
                        "",
                        "",
                    ],
                    ["`torch.linalg.svd` (reduced)", fmt_ms(pvs["svd_s"]), "0 (reference)", "0"],
                ],
            )
        )
    calls = f"{log_calls:,}".replace(",", " ")
    parts.append(
        f"**`Monitor.log()` on a non-check step** (best of 3 × {calls} calls):\n\n"
        + table(["call", "µs per call"], [[k, fmt_us(v)] for k, v in logs.items()])
    )
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default="small,medium")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--svd-steps",
        type=int,
        default=101,
        help=f"training steps of the power-iteration comparison, a check every {SVD_EVERY} "
        f"(at least {SVD_EVERY + 1}: the first check is cold, a warm one must follow)",
    )
    parser.add_argument("--log-calls", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--gpu-path",
        action="store_true",
        help="on a CPU, stack (and pad) weights and sampled rows as on a GPU (to count its ops)",
    )
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if args.svd_steps < SVD_EVERY + 1:
        parser.error(f"--svd-steps must be at least {SVD_EVERY + 1} (got {args.svd_steps})")
    torch.set_num_threads(args.threads)
    if args.gpu_path:
        from collector import batched

        batched.CPU_STACK_MAX_NUMEL, batched.CPU_STACK_ROWS = math.inf, True
        batched.CPU_PAD_SHAPES = True
    results = []
    with tempfile.TemporaryDirectory(prefix="tripwire-check-cost-") as tmp_name:
        tmp = Path(tmp_name)
        for name in args.sizes.split(","):
            size = Size.named(name)
            seconds, ops = breakdown(size, args.device, args.rounds, tmp)
            results.append(
                {
                    "size": size,
                    "breakdown": seconds,
                    "ops": ops,
                    "svd": power_vs_svd(size, args.device, args.svd_steps, SVD_EVERY),
                }
            )
        logs = log_cost(args.log_calls, tmp)
    emit(
        f"Check cost ({args.device}{', GPU path' if args.gpu_path else ''})",
        report(results, logs, args.device, args.rounds, args.log_calls, args.gpu_path),
        write=not args.no_write,
    )
    return {"results": results, "log": logs}


if __name__ == "__main__":
    main()
