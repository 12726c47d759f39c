"""The live engine evaluates a running run only up to its horizon, the last step whose data is
complete. Wherever the writer's batches happen to split a check's records, every step up to
the horizon must already have its loss: a step evaluated without it is never evaluated again,
and the live alerts would differ from a backtest of the same run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import collector
from alerts import observations
from storage import Database, runs
from storage import writer as writer_module
from storage.writer import BatchWriter


@pytest.mark.parametrize("order", ["log", "integration"])
def test_every_step_up_to_the_horizon_has_its_loss_whatever_the_batches(
    monkeypatch, sqlite_url, tmp_path, order
):
    db = Database(sqlite_url)
    db.upgrade()
    seen: list[tuple[int, list[int]]] = []  # (horizon, steps up to it with a loss) per commit
    commit = BatchWriter._commit

    def commit_then_evaluate_as_the_scheduler_would(self, records):
        commit(self, records)
        if self.run_id is None:
            return
        run = runs.get_run(db, self.run_id)
        limit = observations.horizon(db, run)
        if run.status != "running" or limit is None:
            return
        steps = observations.load(db, run.id, -1, limit)
        seen.append((limit, [o.step for o in steps if "loss" in o.scalars]))

    # The writer at its most unlucky: every record is a transaction of its own.
    monkeypatch.setattr(writer_module, "MAX_BATCH_RECORDS", 1)
    monkeypatch.setattr(BatchWriter, "_commit", commit_then_evaluate_as_the_scheduler_would)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    gen = torch.Generator().manual_seed(0)
    with collector.watch(model, run="horizon", db=sqlite_url, every=5, spool_dir=tmp_path) as m:
        for step in range(23):
            if order == "integration":  # Trainer, Lightning: each step announced
                m.prepare(step)
            loss = model(torch.randn(4, 8, generator=gen)).square().mean()
            loss.backward()
            if order == "log":  # a plain loop
                m.log(step, loss=loss)
            else:  # the check at the final gradients, the loss reported after it
                m.check(step)
                m.record(step, loss=loss)
            model.zero_grad()
    assert max(h for h, _ in seen) >= 15, seen  # the run was evaluated while it ran
    assert all(steps == list(range(h + 1)) for h, steps in seen), seen
