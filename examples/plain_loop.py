"""Tripwire in a plain PyTorch loop: a small MLP language model on synthetic tokens.

    python examples/plain_loop.py --steps 200
    torchrun --nproc-per-node 2 examples/plain_loop.py      # DDP on gloo: rank 0 writes

Then ``tripwire dashboard`` shows the run. Everything is in memory; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from torch import nn

import collector


class TinyLM(nn.Module):
    """Embedding, two residual MLP blocks, a head: every Linear is monitored."""

    def __init__(self, vocab: int = 64, width: int = 64):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(width),
                nn.Linear(width, 4 * width),
                nn.GELU(),
                nn.Linear(4 * width, width),
            )
            for _ in range(2)
        )
        self.head = nn.Linear(width, vocab)

    def forward(self, ids):
        h = self.embed(ids)
        for block in self.blocks:
            h = h + block(h)
        return self.head(h)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--db",
        default=None,
        help="database URL (default: $TRIPWIRE_DB_URL or sqlite:///tripwire.db)",
    )
    parser.add_argument("--run", default="plain-loop")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:  # started by torchrun
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)

    torch.manual_seed(0)
    model = TinyLM()
    if distributed:
        model = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    data = torch.Generator().manual_seed(rank)  # each rank draws its own share of the batch

    with collector.watch(
        model, run=args.run, db=args.db, every=args.every, config=vars(args)
    ) as monitor:
        for step in range(args.steps):
            ids = torch.randint(0, 64, (16 // world, 33), generator=data)
            logits = model(ids[:, :-1])
            loss = nn.functional.cross_entropy(logits.reshape(-1, 64), ids[:, 1:].reshape(-1))
            loss.backward()
            monitor.log(step, loss=loss, lr=optimizer.param_groups[0]["lr"])  # after backward
            optimizer.step()
            optimizer.zero_grad()
    if rank == 0:
        print(
            f"run {monitor.name!r}: {args.steps} steps, {monitor.checks} checks, {monitor.errors} errors"
        )
    if distributed:
        dist.barrier()  # gloo aborts a rank that tears down while its peer is still mid-collective
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
