"""A tiny model, its data, a training loop usable in one process or on each rank, and DB reads."""

from __future__ import annotations

import os
import socket
import sys

import torch
from torch import nn

from storage import Database, runs, stats
from storage import alerts as alert_store

STAT_NAMES = (
    "grad_norm",
    "weight_norm",
    "sigma1",
    "stable_rank",
    "sa_pos",
    "sa_imbalance",
    "sa_mean",
    "sa_abs_mean",
    "act_max",
    "act_norm_mean",
)


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 32)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(32, 32)
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        return self.head(self.act(self.fc2(self.act(self.fc1(x)))))


def tiny_llama(**config) -> nn.Module:
    """A randomly initialised transformers ``LlamaForCausalLM`` (from its config, nothing is
    downloaded): 2 blocks of width 32, a vocabulary of 64; ``config`` overrides."""
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "vocab_size": 64,
        "max_position_embeddings": 32,
    }
    return LlamaForCausalLM(LlamaConfig(**(shape | config)))


def train_llama(model: nn.Module, monitor, steps: int = 5, runnable=None) -> None:
    """AdamW on random token batches of :func:`tiny_llama`'s vocabulary; ``monitor.log`` after
    backward. ``runnable``: what the loop calls (a compiled ``model``), else ``model``."""
    runnable = model if runnable is None else runnable
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        ids = torch.randint(0, 64, (2, 8), generator=gen)
        loss = runnable(input_ids=ids, labels=ids).loss
        loss.backward()
        monitor.log(step, loss=loss)
        opt.step()
        opt.zero_grad()


def batches(n: int, batch: int = 8, seed: int = 0):
    """``n`` global batches of (batch, 4 tokens, 12 features) and their labels."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        yield (
            torch.randn(batch, 4, 12, generator=gen),
            torch.randint(0, 3, (batch, 4), generator=gen),
        )


def train(model, monitor, steps: int, *, rank: int = 0, world: int = 1, nan_at=None, nan_rank=None):
    """Plain SGD on this rank's share of each global batch; ``monitor.log`` after backward."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step, (x, y) in enumerate(batches(steps)):
        x, y = x.chunk(world)[rank], y.chunk(world)[rank]
        if step == nan_at and rank == nan_rank:
            x = x.clone()
            x[0, 0, 0] = float("nan")
        loss = nn.functional.cross_entropy(model(x).reshape(-1, 3), y.reshape(-1))
        loss.backward()
        monitor.log(step, loss=loss)
        opt.step()
        opt.zero_grad()


def exit_without_shutdown() -> None:
    """End a distributed worker process now, exit code 0, after flushing its output.

    gloo aborts a worker now and then at interpreter shutdown ("terminate called without an
    active exception"), even after ``destroy_process_group()``, with or without Tripwire:
    ``scripts/gloo_exit_abort.py`` saw it in 1 of 40 plain 2-rank DDP runs and 1 of 40 watched
    ones. Call it only once the worker has written everything it reports.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def layer_table(url: str, run_name: str) -> dict[tuple[int, str], object]:
    """{(step, layer): LayerStat} of the newest run with this name."""
    db = Database(url)
    run = runs.find_run(db, run_name)
    return {(r.step, r.layer): r for r in stats.layer_stats(db, run.id)}


def scalar_table(url: str, run_name: str) -> dict[str, dict[int, float]]:
    """{key: {step: value}} of the newest run with this name."""
    db = Database(url)
    run = runs.find_run(db, run_name)
    out: dict[str, dict[int, float]] = {}
    for p in stats.scalar_series(db, run.id):
        out.setdefault(p.key, {})[p.step] = p.value
    return out


def fire_critical_alert(
    url: str, run_id: int, step: int = 0, predictor: str = "non_finite"
) -> None:
    """What the alert engine writes when a critical alert fires for the run."""
    alert = {
        "predictor": predictor,
        "layer": None,
        "fingerprint": f"{run_id}/{predictor}",
        "severity": "critical",
        "state": "firing",
        "score": 1.0,
        "message": "test alarm",
        "details": {},
        "first_step": step,
        "fired_step": step,
        "last_step": step,
        "resolved_step": None,
        "hold_count": 1,
        "last_notified_step": None,
    }
    db = Database(url)
    cursor = alert_store.eval_cursors(db, [run_id]).get(run_id)  # one fired before
    alert_store.commit_evaluation(
        db,
        run_id,
        expected_step=None if cursor is None else cursor.last_step,
        last_step=step,
        state={},
        writes=[alert_store.AlertWrite(None, alert)],
        expected_at=None if cursor is None else cursor.updated_at,
    )
