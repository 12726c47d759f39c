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
import math
import tempfile
import time
import timeit
from pathlib import Path

import torch

from bench.common import emit, fmt_ms, fmt_us, interleave_cpu, machine, median, table
from bench.overhead import Size, build

# the parts of one check, in the order of the table
PARTS = (
    "hooks: arm + sample inputs",
    "norms (fused)",
    "power iteration (warm)",
    "v drift",
    "SA statistics",
    "host transfer",
    "rows + queue",
)


class _Inputs:
    """Keeps the full input of every monitored layer from one forward pass."""

    def __init__(self, layers) -> None:
        self.x: dict[str, torch.Tensor] = {}
        self._handles = [
            layer.module.register_forward_hook(self._hook(layer.name)) for layer in layers
        ]

    def _hook(self, name):
        def hook(module, inputs, output):  # noqa: ARG001
            self.x[name] = inputs[0].detach()

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def breakdown(size: Size, device: str, rounds: int, tmp: Path) -> dict:
    """Median seconds of each part of one check over ``rounds`` interleaved rounds."""
    import collector
    from collector import checks, norms, spectral
    from collector.checks import _COLUMNS

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
    rows = {
        n: spectral.sample_rows(t, sampler.sample_size, sampler._generator(t.device))
        for n, t in inputs.items()
    }
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

    def power():
        for layer in layers:
            spectral.power_iteration(layer.weight, v1s[layer.name])

    def drift():
        for layer in layers:
            spectral.v_drift(v1s[layer.name], v1s[layer.name])

    def sa():
        for name, r in rows.items():
            spectral.sa_statistics(r, v1s[name])

    def transfer():
        torch.stack([t.cpu() for t in per_layer]).tolist()
        torch.stack([h.cpu() for h in hists]).tolist()

    def queue_rows():
        out = []
        for r in row_dicts:
            row = dict(r)
            row["step"], row["wall_time"] = 0, time.time()
            out.append(row)
        monitor._writer.put("layer_stats", out)

    def whole_check():
        checks.run_check(layers, rows, state)

    def monitor_check():
        sampler.arm()
        for layer in layers:
            sampler._hook_for(layer.name)(layer.module, (inputs[layer.name],), None)
        monitor._check(0)

    parts = dict(
        zip(PARTS, (hooks, norm_part, power, drift, sa, transfer, queue_rows), strict=True)
    )
    parts["run_check (all statistics)"] = whole_check
    parts["Monitor check, end to end"] = monitor_check
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    for fn in parts.values():
        fn()
    wall, cpu = interleave_cpu(parts, rounds, sync=sync)
    monitor.close()
    # CPU time of this thread on CPU (robust on a shared machine); wall time on a GPU
    times = wall if device.startswith("cuda") else cpu
    return {name: median(t) for name, t in times.items()}


def power_vs_svd(size: Size, device: str, steps: int, every: int) -> dict:
    """Train ``steps`` steps; at each check compare warm power iteration with a full SVD."""
    from collector.layers import select_layers
    from collector.spectral import power_iteration

    model, opt, x = build(size, device, seed=1)
    layers = select_layers(model)
    v_state: dict[str, torch.Tensor] = {}
    sigma_err, v_err, gapped_sigma, gapped_v = [], [], [], []
    t_warm, t_cold, t_svd = [], [], []
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for step in range(steps):
        loss = model(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % every:
            continue
        with torch.no_grad():
            for layer in layers:
                w = layer.weight.detach()
                cold = step == 0 or layer.name not in v_state
                sync()
                t0 = time.perf_counter()
                sigma, v, _ = power_iteration(w, v_state.get(layer.name))
                sync()
                (t_cold if cold else t_warm).append(time.perf_counter() - t0)
                v_state[layer.name] = v
                t0 = time.perf_counter()
                _, s, vh = torch.linalg.svd(w.float(), full_matrices=False)
                sync()
                t_svd.append(time.perf_counter() - t0)
                if cold:
                    continue
                rel = abs(float(sigma) - float(s[0])) / float(s[0])
                angle = math.acos(min(1.0, abs(float(torch.dot(v, vh[0])))))
                sigma_err.append(rel)
                v_err.append(angle)
                if len(s) > 1 and float(s[1]) < 0.95 * float(s[0]):
                    gapped_sigma.append(rel)
                    gapped_v.append(angle)
    n_layers = len(layers)
    return {
        "layers": n_layers,
        "checks": len(sigma_err) // max(n_layers, 1),
        "warm_s": sum(t_warm) / max(len(t_warm), 1) * n_layers,
        "cold_s": sum(t_cold) / max(len(t_cold), 1) * n_layers,
        "svd_s": sum(t_svd) / max(len(t_svd), 1) * n_layers,
        "sigma_median": median(sigma_err),
        "sigma_max": max(sigma_err, default=math.nan),
        "v_median": median(v_err),
        "v_max": max(v_err, default=math.nan),
        "gapped": len(gapped_v),
        "gapped_sigma_max": max(gapped_sigma, default=math.nan),
        "gapped_v_max": max(gapped_v, default=math.nan),
        "pairs": len(v_err),
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
        monitor.log(0, loss=loss, lr=1e-3)  # step 0 is a check step; the rest are not
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


def report(results: list[dict], logs: dict, device: str, rounds: int) -> str:
    parts = [
        f"Measured on {machine(device)}. Command: `python -m bench.check_cost --device {device}`."
    ]
    for res in results:
        s, parts_s, pvs = res["size"], res["breakdown"], res["svd"]
        whole = parts_s["Monitor check, end to end"]
        rows = [[name, fmt_ms(sec), f"{100 * sec / whole:.0f} %"] for name, sec in parts_s.items()]
        parts.append(
            f"**One check, {s.name} GPT** ({pvs['layers']} linear layers, batch {s.batch} × "
            f"{s.block} tokens): median over {rounds} interleaved rounds of the calling thread's "
            "CPU time (wall time on a GPU); the parts are timed alone, so they need not add up "
            "to the whole.\n\n"
            + table(["part", "ms", "of the whole check"], rows)
        )
        parts.append(
            f"**Power iteration against `torch.linalg.svd`, {s.name} GPT**: all {pvs['layers']} "
            f"weight matrices, {pvs['checks']} warm checks while training with AdamW "
            f"(lr 1e-3, a check every 10 steps); errors over {pvs['pairs']} (layer, check) pairs; "
            f"the v1 angle only means something where σ2 < 0.95 σ1 ({pvs['gapped']} pairs).\n\n"
            + table(
                ["method", "ms per check (all layers)", "σ1 rel. error median / max", "v1 angle"],
                [
                    [
                        "power iteration, warm (4 iterations)",
                        fmt_ms(pvs["warm_s"]),
                        f"{pvs['sigma_median']:.1e} / {pvs['sigma_max']:.1e}",
                        f"median {pvs['v_median']:.1e} rad, max {pvs['v_max']:.1e}; "
                        f"where gapped max {pvs['gapped_v_max']:.1e}",
                    ],
                    ["power iteration, cold (30 iterations)", fmt_ms(pvs["cold_s"]), "", ""],
                    ["`torch.linalg.svd` (full, reduced matrices)", fmt_ms(pvs["svd_s"]), "0", "0"],
                ],
            )
        )
    parts.append(
        "**`Monitor.log()` on a non-check step** (best of 3 × 100 000 calls):\n\n"
        + table(["call", "µs per call"], [[k, fmt_us(v)] for k, v in logs.items()])
    )
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default="small,medium")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--svd-steps", type=int, default=101)
    parser.add_argument("--log-calls", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory(prefix="tripwire-check-cost-") as tmp_name:
        tmp = Path(tmp_name)
        for name in args.sizes.split(","):
            size = Size.named(name)
            results.append(
                {
                    "size": size,
                    "breakdown": breakdown(size, args.device, args.rounds, tmp),
                    "svd": power_vs_svd(size, args.device, args.svd_steps, 10),
                }
            )
        logs = log_cost(args.log_calls, tmp)
    emit(
        f"Check cost ({args.device})",
        report(results, logs, args.device, args.rounds),
        write=not args.no_write,
    )
    return {"results": results, "log": logs}


if __name__ == "__main__":
    main()
