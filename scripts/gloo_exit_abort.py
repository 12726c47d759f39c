"""Does a plain 2-rank gloo DDP script abort at interpreter exit, with and without Tripwire?

Each run spawns two CPU ranks that train a tiny model for 6 steps under DDP, optionally with
``collector.watch``, then leave the group with a barrier and ``destroy_process_group()`` and exit
normally. Now and then a rank dies at interpreter shutdown with "terminate called without an
active exception" (SIGABRT), Tripwire or not: PyTorch's gloo teardown, not ours (see
docs/integrations.md, "Distributed").

    .venv/bin/python scripts/gloo_exit_abort.py --runs 15
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _worker(rank: int, world: int, port: int, with_tripwire: bool, db: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    model = DistributedDataParallel(net)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = None
    if with_tripwire:
        import collector

        monitor = collector.watch(model, run="gloo-exit", db=db, every=2)
    for step in range(6):
        loss = model(torch.randn(8, 12)).square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if monitor:
            monitor.log(step, loss=loss)
    if monitor:
        monitor.close()
    dist.barrier()
    dist.destroy_process_group()


def one_run(with_tripwire: bool, port: int) -> None:
    """Spawn the two ranks (the child process of :func:`main`)."""
    import torch.multiprocessing as mp

    db = f"sqlite:///{tempfile.mkdtemp()}/gloo-exit.db"
    mp.spawn(_worker, args=(2, port, with_tripwire, db), nprocs=2, join=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="runs of each variant")
    parser.add_argument("--port", type=int, default=29650)
    args = parser.parse_args()
    aborted = {"plain": 0, "tripwire": 0}
    port = args.port
    for _ in range(args.runs):
        for variant in aborted:
            port += 1
            code = f"from scripts.gloo_exit_abort import one_run; one_run({variant == 'tripwire'}, {port})"
            done = subprocess.run(
                [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
            )
            if done.returncode != 0:
                aborted[variant] += 1
                print(f"{variant}: exit {done.returncode}: {done.stderr.strip().splitlines()[-1]}")
    for variant, n in aborted.items():
        print(f"{variant}: {n} of {args.runs} runs ended with an error")
    return 0


if __name__ == "__main__":
    sys.exit(main())
