"""Collector overhead: step time of a GPT training loop with and without monitoring.

Variants, each on its own copy of the model (same seed), interleaved block by block in one
process (a block is ``every`` steps, so it holds exactly one check at the default cadence):

- ``none``: forward, backward, AdamW step;
- ``tripwire``: ``collector.watch(model, every=10)`` and ``monitor.log(step, loss=loss, lr=lr)``;
- ``tripwire every step``: the same with ``every=1``;
- ``tripwire no writes``: the defaults, but the writer thread drops its batches instead of
  committing them (a diagnostic: what the database writes running beside training cost);
- ``wandb``: ``wandb.watch(model, log="all", log_freq=10)`` (offline) and ``wandb.log`` of the loss;
- ``tensorboard``: ``add_scalar`` of the loss every step and ``add_histogram`` of every weight
  and gradient every 10 steps.

The figure of a variant is the median block time divided by the block's steps; its ratio to
``none`` is the median of per-round paired ratios. Background work (Tripwire's writer thread,
wandb's service process, TensorBoard's event writer) overlaps training as it would in real use;
the Tripwire writer thread's CPU time after the warm-up (its set-up left out) is reported apart.

    .venv/bin/python -m bench.overhead                          # CPU, small and medium GPT
    .venv/bin/python -m bench.overhead --sizes small --rounds 5 --no-write   # a quick look
    .venv/bin/python -m bench.overhead --device cuda --sizes large        # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.common import emit, fmt_ms, interleave_cpu, machine, median, table

SIZES = {
    # name: (n_layer, d_model, n_head, batch, block_size[, arch])
    "tiny": (1, 32, 2, 2, 16),
    "small": (4, 128, 4, 16, 64),
    "small-long": (4, 128, 4, 16, 256),
    "medium": (8, 512, 8, 4, 64),
    "large": (12, 768, 12, 8, 256),
    "llama-tiny": (1, 32, 2, 2, 16, "llama"),
    "llama-small": (4, 128, 4, 16, 64, "llama"),
    "llama-medium": (8, 512, 8, 4, 64, "llama"),
}
"""Model and batch shapes. ``small-long`` is ``small`` on 4× longer sequences: the same check,
4× the tokens per step (the overhead falls with the work per step). ``medium`` is the biggest
that fits a CPU run's time here (25 M parameters); ``large`` (85 M parameters) is for a GPU.
``llama-*``: transformers' ``LlamaForCausalLM`` of the GPT's shape (SwiGLU MLP 8/3 as wide as
the model, rounded up to a multiple of 8): seven linear layers a block, whose q/k/v and
gate/up projections read one input each."""

VARIANTS = ("none", "tripwire", "tripwire every step", "tripwire no writes", "wandb", "tensorboard")


@dataclass
class Size:
    name: str
    n_layer: int
    d_model: int
    n_head: int
    batch: int
    block: int
    arch: str = "gpt"

    @classmethod
    def named(cls, name: str) -> Size:
        return cls(name, *SIZES[name])

    @property
    def model(self) -> str:
        """The architecture, for reports: ``GPT`` or ``Llama``."""
        return "Llama" if self.arch == "llama" else "GPT"

    @property
    def title(self) -> str:
        """``small GPT``; a Llama's name says what it is: ``llama-small``."""
        return self.name if self.arch == "llama" else f"{self.name} GPT"

    @property
    def linear_layers(self) -> int:
        """Monitored linear layers: per block qkv, proj, fc, proj (GPT) or q, k, v, o, gate,
        up, down (Llama), and the output layer."""
        return (7 if self.arch == "llama" else 4) * self.n_layer + 1


def build(size: Size, device: str, seed: int = 0):
    """A GPT (or Llama) of ``size``, its AdamW optimizer and one fixed batch (random tokens);
    ``model(x, targets)`` is the loss."""
    from tripwire.models import GPT, GPTConfig

    torch.manual_seed(seed)
    cfg = GPTConfig(
        n_layer=size.n_layer, d_model=size.d_model, n_head=size.n_head, block_size=size.block
    )
    if size.arch == "llama":
        from bench.prediction.runs import CausalLM

        model = CausalLM.llama(
            vocab_size=cfg.vocab_size,
            num_hidden_layers=size.n_layer,
            hidden_size=size.d_model,
            num_attention_heads=size.n_head,
            num_key_value_heads=size.n_head,
            intermediate_size=-(-8 * size.d_model // 3 // 8) * 8,
            max_position_embeddings=size.block,
        ).to(device)
    else:
        model = GPT(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, cfg.vocab_size, (size.batch, size.block), generator=gen).to(device)
    return model, opt, x


class Loop:
    """One variant's training loop; ``block()`` runs ``steps`` steps and keeps the step count."""

    def __init__(self, variant: str, size: Size, device: str, tmp: Path, every: int, autocast=None):
        self.variant, self.every, self.step = variant, every, 0
        self.device_type, self.autocast = device.split(":")[0], autocast
        self.model, self.opt, self.x = build(size, device)
        self.monitor = self.tb = None
        self.lr = 1e-3
        if variant.startswith("tripwire"):
            import collector

            self.monitor = collector.watch(
                self.model,
                run=f"overhead-{size.name}-{variant}",
                db=f"sqlite:///{tmp / (variant.replace(' ', '-') + '.db')}",
                every=1 if variant.endswith("every step") else every,
                spool_dir=str(tmp / "spool"),
            )
            if variant == "tripwire no writes":
                # A diagnostic, not a mode: the same checks and queueing, but the writer thread
                # drops each batch instead of committing it. Against "tripwire" it splits the
                # overhead into the collector's own work and the writer's running beside it.
                self.monitor._writer._commit = lambda records: None
        elif variant == "wandb":
            import wandb

            wandb.watch(self.model, log="all", log_freq=every)
        elif variant == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(tmp / f"tb-{size.name}"))

    def one_step(self) -> None:
        step = self.step
        with torch.autocast(self.device_type, self.autocast, enabled=self.autocast is not None):
            loss = self.model(self.x, self.x)
        loss.backward()
        if self.monitor is not None:
            self.monitor.log(step, loss=loss, lr=self.lr)
        elif self.variant == "wandb":
            import wandb

            wandb.log({"loss": loss.item(), "lr": self.lr})  # sync point, as users write it
        elif self.tb is not None:
            self.tb.add_scalar("loss", loss.item(), step)  # sync point, as users write it
            if step % self.every == 0:
                for name, p in self.model.named_parameters():
                    self.tb.add_histogram(name, p, step)
                    if p.grad is not None:
                        self.tb.add_histogram(f"{name}/grad", p.grad, step)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1

    def block(self, steps: int) -> None:
        for _ in range(steps):
            self.one_step()

    def writer_cpu_s(self) -> float:
        """CPU seconds the Tripwire writer thread has used so far (0 for other variants)."""
        if self.monitor is None:
            return 0.0
        # The thread's own CPU clock: nanoseconds, where psutil's times count 10 ms ticks.
        clock = time.pthread_getcpuclockid(self.monitor._writer._thread.ident)
        return time.clock_gettime(clock)

    def close(self) -> None:
        if self.monitor is not None:
            self.monitor.close()
        if self.tb is not None:
            self.tb.close()


def measure(size: Size, device: str, rounds: int, every: int, variants, autocast=None) -> dict:
    """Interleaved block timings of every variant at one model size (forward passes under
    ``torch.autocast`` to the dtype ``autocast``, if given)."""
    with tempfile.TemporaryDirectory(prefix="tripwire-overhead-") as tmp_name:
        tmp = Path(tmp_name)
        run = None
        if "wandb" in variants:
            os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DIR=tmp_name)
            try:
                import wandb

                run = wandb.init(project="tripwire-overhead", dir=tmp_name, mode="offline")
            except Exception as exc:  # not installed, or broken here: measure the others
                print(f"[wandb left out: {type(exc).__name__}: {exc}]", file=sys.stderr)
                variants = tuple(v for v in variants if v != "wandb")
        loops = {v: Loop(v, size, device, tmp, every, autocast) for v in variants}
        sync = torch.cuda.synchronize if device.startswith("cuda") else None
        for loop in loops.values():  # warm-up: cold power iteration, lazy imports, allocator
            loop.block(every)
        # The writer's first commits (creating the run, compiling statements) are set-up, not
        # the per-check cost: count its CPU from the end of the warm-up.
        writer_cpu_before, checks_before = _writer_mark(loops)
        times, cpu_times = interleave_cpu(
            {v: (lambda loop=loop: loop.block(every)) for v, loop in loops.items()},
            rounds,
            sync=sync,
        )
        writer_cpu_after, checks_after = _writer_mark(loops)
        checks = {v: checks_after[v] - checks_before[v] for v in checks_after}
        writer_cpu = {v: writer_cpu_after[v] - writer_cpu_before[v] for v in writer_cpu_after}
        errors = {v: loop.monitor.errors for v, loop in loops.items() if loop.monitor}
        for loop in loops.values():
            loop.close()
        if run is not None:
            run.finish()
        params = sum(
            p.numel() for p in loops["none" if "none" in loops else variants[0]].model.parameters()
        )
    result = {"size": size, "params": params, "rounds": rounds, "rows": []}
    for v in variants:
        row = {"variant": v, "errors": errors.get(v)}
        for label, series in (("wall", times), ("cpu", cpu_times)):
            base = series.get("none")
            paired = [t / b for t, b in zip(series[v], base, strict=True)] if base else []
            row[f"{label}_step_s"] = median(series[v]) / every
            row[f"{label}_ratio"] = median(paired) if base else float("nan")
        row["writer_cpu_per_check_s"] = (writer_cpu[v] / checks[v]) if checks.get(v) else None
        result["rows"].append(row)
    return result


def _writer_mark(loops: dict[str, Loop]) -> tuple[dict[str, float], dict[str, int]]:
    """Each monitored variant's writer CPU seconds and check count, once its writes landed."""
    monitored = {v: loop for v, loop in loops.items() if loop.monitor is not None}
    for loop in monitored.values():
        loop.monitor.flush()
    return (
        {v: loop.writer_cpu_s() for v, loop in monitored.items()},
        {v: loop.monitor.checks for v, loop in monitored.items()},
    )


class _PeakRss:
    """Samples this process's RSS every millisecond in a thread; ``peak`` is the largest seen."""

    def __init__(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def now(self) -> int:
        return self._proc.memory_info().rss

    def _run(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, self.now())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, self.now())


def memory_probe(size_name: str, variant: str, device: str, steps: int, every: int) -> dict:
    """Host RSS (and device memory) a loop of ``steps`` steps adds; run in a fresh process.

    ``setup``: RSS growth from creating the monitor (importing storage, the engine, the schema);
    ``training``: peak RSS during the steps above the RSS before them.
    """
    size = Size.named(size_name)
    with tempfile.TemporaryDirectory(prefix="tripwire-mem-") as tmp:
        loop = Loop("none", size, device, Path(tmp), every)
        loop.block(2)  # the optimizer state and autograd buffers exist before we start counting
        cuda = device.startswith("cuda")
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        sampler = _PeakRss()
        before = sampler.now()
        if variant == "tripwire":
            import collector

            loop.monitor = collector.watch(
                loop.model, run="memory", db=f"sqlite:///{tmp}/m.db", every=every, spool_dir=tmp
            )
        set_up = sampler.now()
        sampler.peak = set_up
        loop.block(steps)
        if cuda:
            torch.cuda.synchronize()
        peak = sampler.stop()
        if loop.monitor is not None:
            loop.monitor.close()
        peak_dev = torch.cuda.max_memory_allocated() if cuda else None
    return {"setup": set_up - before, "training": peak - set_up, "device_peak": peak_dev}


def memory(size: Size, device: str, every: int, steps: int, repeats: int = 3) -> dict:
    """Extra memory of the collector: probe subprocesses with and without it, medians (MiB)."""
    out: dict[str, list] = {"none": [], "tripwire": []}
    for _ in range(repeats):
        for variant in out:
            cmd = [
                sys.executable, "-m", "bench.overhead", "--memory-probe", variant,
                "--sizes", size.name, "--device", device, "--every", str(every),
                "--probe-steps", str(steps),
            ]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            out[variant].append(json.loads(proc.stdout.strip().splitlines()[-1]))

    def extra(key: str) -> float | None:
        if out["none"][0][key] is None:
            return None
        values = {v: median(r[key] for r in rs) for v, rs in out.items()}
        return (values["tripwire"] - values["none"]) / 2**20

    return {"setup": extra("setup"), "training": extra("training"), "device": extra("device_peak")}


def report(
    results: list[dict], mem: dict, device: str, every: int, autocast: str | None = None
) -> str:
    """The section's text; ``autocast`` as given on the command line (``bf16``), if at all."""
    sizes = ",".join(res["size"].name for res in results)
    command = f"python -m bench.overhead --device {device} --sizes {sizes}" + (
        f" --autocast {autocast}" if autocast else ""
    )
    names = {
        "none": "no monitoring",
        "tripwire": f"Tripwire defaults (every={every})",
        "tripwire every step": "Tripwire every step (every=1)",
        "tripwire no writes": f"Tripwire every={every}, rows dropped before the database",
        "wandb": f'wandb.watch(log="all", log_freq={every}), offline',
        "tensorboard": f"TensorBoard add_histogram, every {every} steps",
    }
    parts = [
        f"Measured on {machine(device)}. Median step time over interleaved rounds of "
        f"{every} steps per variant (each block holds one check at the default cadence); ratio = "
        "median of per-round ratios to no monitoring (1.000 = free). *CPU* is the training "
        "thread's CPU time (`time.thread_time`, all of torch's work with one intra-op thread), "
        "which other processes on a shared machine barely disturb; *wall* is what the loop "
        "waited, and moves with the machine's load. Background work runs beside training as in "
        "real use; the Tripwire writer thread's CPU per check (its set-up, the first commits "
        f"during the warm-up, left out) is shown apart. Command: `{command}`."
        + (
            " **On a GPU the wall figures are the ones that count**: the training thread's CPU "
            "time there is mostly launching kernels and waiting for the device."
            if device.startswith("cuda")
            else ""
        )
        + (f" Forward passes under {autocast} autocast." if autocast else "")
    ]
    for res in results:
        s = res["size"]
        rows = []
        for r in res["rows"]:
            cpu = r["writer_cpu_per_check_s"]
            rows.append(
                [
                    names[r["variant"]],
                    fmt_ms(r["cpu_step_s"]),
                    f"{r['cpu_ratio']:.3f}",
                    fmt_ms(r["wall_step_s"]),
                    f"{r['wall_ratio']:.3f}",
                    "" if cpu is None else fmt_ms(cpu),
                ]
            )
        parts.append(
            f"**{s.name}**: {s.model} {s.n_layer} layers, d_model {s.d_model}, "
            f"{res['params'] / 1e6:.1f} M parameters, batch {s.batch} × {s.block} tokens, "
            f"{s.linear_layers} monitored linear layers, {res['rounds']} rounds.\n\n"
            + table(
                [
                    "variant",
                    "CPU ms / step",
                    "CPU ratio",
                    "wall ms / step",
                    "wall ratio",
                    "writer thread CPU ms / check",
                ],
                rows,
            )
        )
    if mem:
        rows = [
            [
                name,
                f"{m['setup']:.1f}",
                f"{m['training']:.1f}",
                "n/a (CPU)" if m["device"] is None else f"{m['device']:.1f}",
            ]
            for name, m in mem.items()
        ]
        parts.append(
            "Extra memory of the collector (defaults), fresh processes with and without it, "
            "medians of 3. *Set-up*: RSS added by `collector.watch` (importing storage and "
            "SQLAlchemy, the engine, the schema); *training*: extra peak RSS during the steps, "
            "sampled every millisecond; device: extra `torch.cuda.max_memory_allocated`.\n\n"
            + table(["model", "set-up host MiB", "training peak host MiB", "device MiB"], rows)
        )
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default="small,medium", help=f"of {', '.join(SIZES)}")
    parser.add_argument(
        "--rounds", type=int, default=20, help="rounds for the tiny and small sizes"
    )
    parser.add_argument("--big-rounds", type=int, default=6, help="rounds for bigger sizes")
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--autocast", choices=["bf16"], help="forward under bf16 autocast")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument(
        "--memory-sizes", help="sizes whose extra memory is measured (default: all)"
    )
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--memory-probe", choices=["none", "tripwire"], help=argparse.SUPPRESS)
    parser.add_argument("--probe-steps", type=int, default=40, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = [Size.named(n) for n in args.sizes.split(",")]
    if args.memory_probe:
        res = memory_probe(
            sizes[0].name, args.memory_probe, args.device, args.probe_steps, args.every
        )
        print(json.dumps(res))
        return res
    variants = tuple(v for v in args.variants.split(",") if v)
    results, mem = [], {}
    autocast = torch.bfloat16 if args.autocast == "bf16" else None
    memory_sizes = set(args.memory_sizes.split(",")) if args.memory_sizes else set(SIZES)
    for size in sizes:
        rounds = args.rounds if size.name.endswith(("tiny", "small")) else args.big_rounds
        t0 = time.perf_counter()
        results.append(measure(size, args.device, rounds, args.every, variants, autocast))
        print(f"[{size.name}: {time.perf_counter() - t0:.0f} s]", file=sys.stderr)
        if not args.no_memory and size.name in memory_sizes:
            mem[size.name] = memory(size, args.device, args.every, args.probe_steps)
    emit(
        f"Overhead ({args.device}{f', {args.autocast} autocast' if args.autocast else ''})",
        report(results, mem, args.device, args.every, args.autocast),
        write=not args.no_write,
    )
    return {"results": results, "memory": mem}


if __name__ == "__main__":
    main()
