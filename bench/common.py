"""Shared helpers of the benchmarks: interleaved timing, medians, Markdown, docs sections.

The machines these run on are shared and noisy, so every comparison is *interleaved*: each round
runs every variant once, in a shuffled order, and a variant's figure is the median over rounds.
Ratios are taken between medians of the same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"


def command_parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of ``python -m MODULE``, whose ``--help`` shows ``doc`` (the module docstring)
    as written: its example commands keep their lines."""
    return argparse.ArgumentParser(
        prog=f"python -m {module}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def interleave(
    variants: dict[str, Callable[[], None]], rounds: int, *, seed: int = 0, sync=None
) -> dict[str, list[float]]:
    """Run each variant once per round in a shuffled order; wall seconds per call, by variant.

    ``sync`` (e.g. ``torch.cuda.synchronize``) is called before each clock read. The CPU
    seconds of the calling thread are kept too: see :func:`interleave_cpu`.
    """
    return interleave_cpu(variants, rounds, seed=seed, sync=sync)[0]


def interleave_cpu(
    variants: dict[str, Callable[[], None]], rounds: int, *, seed: int = 0, sync=None
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Like :func:`interleave`, returning ``(wall seconds, calling-thread CPU seconds)``.

    On a shared CPU the thread's CPU time hardly moves when other processes take the cores,
    while wall time does; with one intra-op thread it holds all of torch's work on the host.
    """
    rng = random.Random(seed)
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for _ in range(rounds):
        rng.shuffle(names)
        for name in names:
            if sync:
                sync()
            t0, c0 = time.perf_counter(), time.thread_time()
            variants[name]()
            if sync:
                sync()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.thread_time() - c0)
    return wall, cpu


def median(values) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def best_of(fn: Callable[[], object], repeat: int = 5, number: int = 1) -> float:
    """Median seconds of one call of ``fn`` over ``repeat`` batches of ``number`` calls."""
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - t0) / number)
    return median(samples)


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def fmt_us(seconds: float) -> str:
    return f"{seconds * 1e6:.1f}"


def table(headers: list[str], rows: list[list]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine(device: str = "cpu") -> str:
    """One line naming where the numbers come from."""
    if device.startswith("cuda") and torch.cuda.is_available():
        where = torch.cuda.get_device_name(torch.device(device))
    else:
        where = _cpu_name()
    return (
        f"{where}; torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s), "
        f"{os.cpu_count()} visible cores (shared), Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}"
    )


def _cpu_name() -> str:
    """``CPU AMD EPYC (family 25, model 1)``: cloud CPUs often hide their model name, and
    two CPUs of one name can round differently."""
    try:
        fields = dict(
            (key.strip(), value.strip())
            for key, _, value in (
                line.partition(":") for line in Path("/proc/cpuinfo").read_text().splitlines()
            )
            if key.strip() in ("model name", "cpu family", "model")
        )
    except OSError:
        fields = {}
    if "model name" not in fields:
        return "CPU " + (platform.processor() or platform.machine())
    name = "CPU " + fields["model name"]
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def write_section(title: str, body: str, path: Path = DOCS) -> None:
    """Replace the ``## title`` section of ``path`` (up to the next ``## ``), or append it.

    Other benchmarks own other sections of the same file; only this one is touched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text, encoding="utf-8")


def emit(title: str, body: str, write: bool) -> None:
    """Print the section and, when ``write``, put it into docs/benchmarks.md."""
    print(f"## {title}\n\n{body.strip()}\n")
    if write:
        write_section(title, body)
        print(f"(written to {DOCS.relative_to(ROOT)})")


def rank_0_of_2():
    """The ranks of a two-rank DDP job as rank 0 sees them, its all-reduces left out (one
    process stands in): what a check costs and computes under DDP, besides the communication.
    With every rank's sample being this one's, the combined statistics are this rank's own."""
    from dataclasses import dataclass

    from collector.distributed import Ranks

    @dataclass(frozen=True)
    class Rank0Of2(Ranks):
        def _all_reduce(self, tensor: torch.Tensor, op: str) -> torch.Tensor:  # noqa: ARG002
            return tensor

    return Rank0Of2(rank=0, world=2, reduces=True)
