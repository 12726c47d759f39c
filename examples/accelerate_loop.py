"""Tripwire in an Accelerate loop: the tracker for ``accelerator.log`` and the layer watch.

python examples/accelerate_loop.py --steps 100
accelerate launch --num_processes 2 --cpu examples/accelerate_loop.py   # DDP: rank 0 writes
"""

from __future__ import annotations

import argparse

import torch
from accelerate import Accelerator
from torch import nn

from collector.integrations.accelerate import TripwireTracker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--db",
        default=None,
        help="database URL (default: $TRIPWIRE_DB_URL or sqlite:///tripwire.db)",
    )
    parser.add_argument("--run", default="accelerate-mlp")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--every", type=int, default=10)
    args = parser.parse_args()

    tracker = TripwireTracker(run=args.run, db=args.db, every=args.every)
    accelerator = Accelerator(log_with=[tracker], gradient_accumulation_steps=2, cpu=True)

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(20, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 4)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randn(2 * 16 * args.steps, 20)
    y = (x[:, :4].argmax(dim=1) + (x[:, 4] > 1).long()) % 4
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

    accelerator.init_trackers("examples", config={"lr": 1e-2, "accumulation": 2})  # before watch()
    monitor = tracker.watch(accelerator.unwrap_model(model))  # on every rank

    step = 0
    for inputs, labels in loader:
        with accelerator.accumulate(model):
            loss = nn.functional.cross_entropy(model(inputs), labels)
            accelerator.backward(loss)
            if accelerator.sync_gradients:  # the last micro-batch: gradients are complete
                accelerator.clip_grad_norm_(model.parameters(), 1.0)
                monitor.log(step, loss=loss)
                accelerator.log({"lr": optimizer.param_groups[0]["lr"]}, step=step)
                step += 1
            optimizer.step()
            optimizer.zero_grad()
        if step >= args.steps:
            break
    accelerator.end_training()
    if accelerator.is_main_process:
        print(
            f"run {monitor.name!r}: {step} steps, {monitor.checks} checks, {monitor.errors} errors"
        )


if __name__ == "__main__":
    main()
