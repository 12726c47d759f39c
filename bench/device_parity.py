"""The collector on an accelerator: does it measure what it measures on the CPU?

The small GPT of the overhead benchmark (4 layers, d_model 128, batch 16 × 64 tokens: 1 024
input rows per layer, all of them used, so no sampling differs between devices) trains 21 AdamW
steps from one initialisation on fixed random tokens, checked every 10 steps, in these set-ups:

- ``cpu fp32``: the reference;
- ``fp32``: on the device;
- ``bf16 autocast``: on the device, forward under ``torch.autocast(dtype=torch.bfloat16)``;
- ``fp16 GradScaler``: fp16 autocast, ``scaler.unscale_(optimizer)`` before ``monitor.log``,
  as docs/integrations.md tells a plain loop to do;
- ``fp16 GradScaler without unscale_``: the same without it (what the docs warn against);
- ``compiled``: ``torch.compile(model)`` with its default backend (inductor on a GPU);
- ``TF32 allowed``: ``torch.set_float32_matmul_precision("high")`` for the whole loop,
  as nanoGPT and Trainer's ``tf32=True`` set; the check turns it off for its own products, so
  σ1 at step 0 should still match the CPU to fp32 rounding (the forward pass, and with it the
  activation statistics, runs in TF32);
- ``DDP rank 0 (all-reduces left out)``: fp32, with the ranks of a two-rank DDP job as rank 0
  sees them and a single process standing in for both: the combined SA table and the ranks'
  flag table computed and read on the device (the statistics are this rank's own).

Each set-up's per-layer statistics are compared with the reference's at the same check step: the
largest relative difference over layers (``|a - b| / max(|b|, 1e-6)``), per statistic; for
``sa_imbalance``, a fraction often near 0, the largest absolute difference. Also
reported: the collector's errors (``monitor.errors`` and the records the writer thread could
not read back from the device, which must be 0), whether every row the reference has was stored
with every statistic finite and, on CUDA, the synchronizing calls inside ``monitor.log()`` on
the last check step and on the step before it (``torch.cuda.set_sync_debug_mode``).

    .venv/bin/python -m bench.device_parity --device cuda        # on a GPU machine
    .venv/bin/python -m bench.device_parity --device cpu --no-write   # the code path, on a CPU
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.common import emit, machine, rank_0_of_2, table
from bench.overhead import Size, build

STATS = ("weight_norm", "grad_norm", "sigma1", "stable_rank", "sa_imbalance", "act_norm_mean")
"""Compared statistics: the weights' and gradients' own, and the inputs' (SA, activations)."""

ABSOLUTE = {"sa_imbalance"}
"""Fractions in [0, 1], often near 0: compared by absolute difference, the others relatively."""


@dataclass(frozen=True)
class Setup:
    dtype: torch.dtype | None = None  # autocast to this dtype
    scaler: bool = False  # fp16 loss scaling with GradScaler
    unscale: bool = True  # ``scaler.unscale_(optimizer)`` before ``monitor.log``
    compiled: bool = False  # ``torch.compile(model)``, default backend
    ddp: bool = False  # the check as DDP's rank 0 makes it (bench.common.rank_0_of_2)
    tf32: bool = False  # torch.set_float32_matmul_precision("high") for the whole loop


SETUPS = {
    "fp32": Setup(),
    "bf16 autocast": Setup(dtype=torch.bfloat16),
    "fp16 GradScaler": Setup(dtype=torch.float16, scaler=True),
    "fp16 GradScaler without unscale_": Setup(dtype=torch.float16, scaler=True, unscale=False),
    "compiled": Setup(compiled=True),
    "TF32 allowed": Setup(tf32=True),
    "DDP rank 0 (all-reduces left out)": Setup(ddp=True),
}

STEPS, EVERY = 21, 10


def train(name: str, setup: Setup, device: str, db_url: str, spool: str) -> dict:
    """Train the small GPT under ``setup`` as run ``name``; its stored layer statistics, the
    monitor's errors and the seconds it took."""
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if setup.tf32 else "highest")
    try:
        return _train(name, setup, device, db_url, spool)
    finally:
        torch.set_float32_matmul_precision(precision)


def _train(name: str, setup: Setup, device: str, db_url: str, spool: str) -> dict:
    import collector
    from storage import Database, runs, stats

    model, opt, x = build(Size.named("small"), "cpu")  # one initialisation for every device
    model, x = model.to(device), x.to(device)  # the same Parameters, moved: opt still holds them
    scaler = torch.amp.GradScaler(device.split(":")[0]) if setup.scaler else None
    runnable = torch.compile(model) if setup.compiled else model
    monitor = collector.watch(runnable, run=name, db=db_url, every=EVERY, spool_dir=spool)
    if setup.ddp:  # the combined SA table and the deferred flag table, on this device
        monitor.ranks = rank_0_of_2()
    t0 = time.perf_counter()
    sync_counts: dict[int, int] = {}
    for step in range(STEPS):
        autocast = (
            torch.autocast(device_type=device.split(":")[0], dtype=setup.dtype)
            if setup.dtype
            else contextlib.nullcontext()
        )
        with autocast:
            loss = runnable(x, x)
        if scaler is None:
            loss.backward()
        else:
            scaler.scale(loss).backward()
            if setup.unscale:
                scaler.unscale_(opt)
        with _syncs_counted(device, enabled=step >= STEPS - 2) as syncs:
            monitor.log(step, loss=loss.detach(), lr=1e-3)
        if syncs is not None:
            sync_counts[step] = len(syncs)
        if scaler is None:
            opt.step()
        else:
            scaler.step(opt)
            scaler.update()
        opt.zero_grad(set_to_none=True)
    monitor.close()
    seconds = time.perf_counter() - t0
    db = Database(db_url)
    run = runs.find_run(db, name)
    rows = {(r.step, r.layer): r for r in stats.layer_stats(db, run.id)}
    # a record the writer thread could not read back from the device is dropped, not raised
    errors = monitor.errors + getattr(monitor._writer, "dropped", 0)
    return {"rows": rows, "errors": errors, "seconds": seconds, "syncs": sync_counts}


@contextlib.contextmanager
def _syncs_counted(device: str, enabled: bool):
    """The synchronizing CUDA calls made inside the block (a list of warnings), or None where
    they cannot be counted (not CUDA, or not ``enabled``)."""
    if not (enabled and device.startswith("cuda")):
        yield None
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield caught
        finally:
            torch.cuda.set_sync_debug_mode("default")
    caught[:] = [w for w in caught if "called a synchronizing" in str(w.message)]


def compare(rows: dict, reference: dict) -> dict[tuple[int, str], float]:
    """{(check step, statistic): largest difference over layers (see :data:`ABSOLUTE`)}."""
    out: dict[tuple[int, str], float] = {}
    for (step, layer), row in rows.items():
        ref = reference[(step, layer)]
        for name in STATS:
            a, b = getattr(row, name), getattr(ref, name)
            if a is None or b is None:
                diff = math.inf
            else:
                diff = abs(a - b) / (1.0 if name in ABSOLUTE else max(abs(b), 1e-6))
            out[(step, name)] = max(out.get((step, name), 0.0), diff)
    return out


def all_finite(rows: dict, reference: dict) -> bool:
    """Every row the reference has is there, with every statistic finite."""
    return rows.keys() == reference.keys() and all(
        getattr(r, name) is not None and math.isfinite(getattr(r, name))
        for r in rows.values()
        for name in STATS
    )


def report(device: str, results: dict[str, dict], reference: dict) -> str:
    steps = sorted({step for step, _ in reference["rows"]})
    headers = ["set-up", "errors", "syncs in log(): check / other step", "all there, finite"]
    headers += ["check step"]
    headers += [f"{name} (abs)" if name in ABSOLUTE else name for name in STATS]
    rows = []
    for setup, res in results.items():
        diffs = compare(res["rows"], reference["rows"])
        finite = "yes" if all_finite(res["rows"], reference["rows"]) else "**no**"
        syncs = res["syncs"]
        synced = f"{syncs[STEPS - 1]} / {syncs[STEPS - 2]}" if syncs else "n/a"
        for step in (steps[0], steps[-1]):
            cells = [f"{diffs[(step, name)]:.1e}" for name in STATS]
            rows.append([setup, res["errors"], synced, finite, step, *cells])
    return (
        f"Measured on {machine(device)}. The small GPT (17 monitored linear layers, 1 024 input "
        f"rows per layer, all used) trained {STEPS} AdamW steps, checked every {EVERY}, from one "
        "initialisation; each cell is the largest difference over layers from the CPU fp32 run "
        "at the same check step, relative (absolute for `sa_imbalance`, a fraction often near "
        "0); step 0: the same weights; later steps: after training on each device, so "
        "differences grow. *errors*: the collector's own failures, in the training loop or on "
        "the writer thread. *all there, finite*: every layer row of every check stored, "
        "every statistic finite. *syncs*: synchronizing CUDA "
        f"calls inside `monitor.log()` on step {STEPS - 1} (a check) and {STEPS - 2} (none), "
        "counted by `torch.cuda.set_sync_debug_mode` (0 is the aim: a check's values are "
        "read back on the writer thread). Command: "
        f"`python -m bench.device_parity --device {device}`.\n\n" + table(headers, rows)
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--setups", default=",".join(SETUPS), help=f"of {', '.join(SETUPS)}")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    setups = [s for s in args.setups.split(",") if s]
    results = {}
    with tempfile.TemporaryDirectory(prefix="tripwire-parity-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'parity.db'}"
        reference = train("cpu fp32", Setup(), "cpu", url, tmp)
        for setup in setups:
            try:
                results[setup] = train(setup, SETUPS[setup], args.device, url, tmp)
            except Exception as exc:
                # one set-up failing (say, no fp16 on this device) is a finding, not the end
                print(f"[{setup}: failed: {type(exc).__name__}: {exc}]", file=sys.stderr)
                continue
            print(f"[{setup}: {results[setup]['seconds']:.1f} s]", file=sys.stderr)
    emit(
        f"Device parity ({args.device})",
        report(args.device, results, reference),
        write=not args.no_write,
    )
    return {"reference": reference, "results": results}


if __name__ == "__main__":
    main()
