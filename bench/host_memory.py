"""Which operations of a watched training loop grow the process's host memory.

`bench.overhead` measures how much peak host RSS the collector adds; this finds where it goes.
The overhead benchmark's GPT trains 2 steps unwatched (its optimizer state and autograd buffers
exist before counting starts), is watched, then trains 12 steps (one check) under a
``TorchDispatchMode`` that reads the resident set before and after every aten operation on the
training thread (after ``torch.cuda.synchronize()`` on a GPU). Printed: the growth over the 12
steps, split into anonymous, file-backed and shared pages (``/proc/self/status``), and the
operations that grew it by more than 1 MiB, largest first.

On a GPU, device memory is not host memory, so what is left is mostly code: CUDA loads a kernel's
module lazily, on its first launch (``CUDA_MODULE_LOADING=LAZY``, the default), and a check
launches kernels that a plain training loop never had. On a CPU the list is allocator noise.

    .venv/bin/python -m bench.host_memory --device cuda --size large   # on a GPU machine
    .venv/bin/python -m bench.host_memory --device cpu --size tiny     # the code path, on a CPU
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import collector
from bench.common import command_parser
from bench.overhead import SIZES, Loop, Size

MiB = 2**20
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    """Resident set of this process, bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def rss_kinds() -> dict[str, int]:
    """``RssAnon``, ``RssFile`` and ``RssShmem`` of this process, bytes."""
    with open("/proc/self/status") as f:
        rows = [line.split() for line in f if line.startswith(("RssAnon", "RssFile", "RssShmem"))]
    return {name.rstrip(":"): int(kib) * 1024 for name, kib, _unit in rows}


def describe(args) -> str:
    """``(49, 1024):float32, 2`` for an operation's arguments."""

    def one(a) -> str:
        if isinstance(a, torch.Tensor):
            return f"{tuple(a.shape)}:{str(a.dtype).removeprefix('torch.')}"
        return f"list[{len(a)}]" if isinstance(a, (list, tuple)) else repr(a)[:20]

    return ", ".join(one(a) for a in args)[:140]


class RssByOp(TorchDispatchMode):
    """Records ``(bytes grown, op, arguments)`` for each op that grew the resident set by more
    than ``threshold`` bytes."""

    def __init__(self, threshold: int = MiB):
        super().__init__()
        self.threshold, self.rows = threshold, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        before = rss()
        out = func(*args, **(kwargs or {}))
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        grew = rss() - before
        if grew > self.threshold:
            self.rows.append((grew, str(func), describe(args)))
        return out


def measure(size: Size, device: str, steps: int = 12, every: int = 10) -> dict:
    """Host memory grown by ``steps`` watched steps of ``size``, and the ops that grew it."""
    with tempfile.TemporaryDirectory(prefix="tripwire-host-") as tmp:
        loop = Loop("none", size, device, Path(tmp), every)
        loop.block(2)
        start = rss()
        loop.monitor = collector.watch(
            loop.model, run="host-memory", db=f"sqlite:///{tmp}/m.db", every=every, spool_dir=tmp
        )
        watch = rss() - start
        mode = RssByOp()
        before, kinds_before = rss(), rss_kinds()
        with mode:
            loop.block(steps)
        grown, kinds = rss() - before, rss_kinds()
        loop.monitor.close()
    return {
        "watch": watch,
        "steps": grown,
        "kinds": {name: kinds[name] - kinds_before[name] for name in kinds},
        "ops": sorted(mode.rows, reverse=True),
    }


def report(size: Size, device: str, result: dict, top: int) -> str:
    kinds = ", ".join(f"{name} {grew / MiB:.0f}" for name, grew in result["kinds"].items())
    in_ops = sum(grew for grew, _, _ in result["ops"])
    lines = [
        f"{size.title} on {device}: collector.watch {result['watch'] / MiB:.1f} MiB; "
        f"12 steps with a check {result['steps'] / MiB:.1f} MiB ({kinds}); "
        f"ops that grew it by more than 1 MiB: {in_ops / MiB:.1f} MiB",
        "",
        "| MiB | op | arguments |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {grew / MiB:.1f} | `{op}` | {args} |" for grew, op, args in result["ops"][:top]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = command_parser("bench.host_memory", __doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", default="large", choices=list(SIZES))
    parser.add_argument("--top", type=int, default=25, help="ops to list")
    args = parser.parse_args(argv)
    size = Size.named(args.size)
    result = measure(size, args.device)
    print(report(size, args.device, result, args.top))
    return result


if __name__ == "__main__":
    main()
