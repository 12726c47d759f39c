"""Tripwire in Lightning: ``Trainer.fit`` with the callback, a small MLP on synthetic data.

python examples/lightning_fit.py --steps 200
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
from torch import nn

from collector.integrations.lightning import TripwireCallback


class Classifier(L.LightningModule):
    def __init__(self, lr: float = 1e-2, width: int = 64):
        super().__init__()
        self.save_hyperparameters()  # stored in the run's config
        self.net = nn.Sequential(
            nn.Linear(20, width), nn.GELU(), nn.Linear(width, width), nn.GELU(), nn.Linear(width, 4)
        )

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--db",
        default=None,
        help="database URL (default: $TRIPWIRE_DB_URL or sqlite:///tripwire.db)",
    )
    parser.add_argument("--run", default="lightning-mlp")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--every", type=int, default=10)
    args = parser.parse_args()

    torch.manual_seed(0)
    x = torch.randn(2048, 20)
    y = (x[:, :4].argmax(dim=1) + (x[:, 4] > 1).long()) % 4
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True
    )

    tripwire = TripwireCallback(run=args.run, db=args.db, every=args.every)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=args.steps,
        gradient_clip_val=1.0,
        callbacks=[tripwire],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Classifier(), loader)
    monitor = tripwire.monitor
    print(
        f"run {monitor.name!r}: {trainer.global_step} steps, {monitor.checks} checks, {monitor.errors} errors"
    )


if __name__ == "__main__":
    main()
