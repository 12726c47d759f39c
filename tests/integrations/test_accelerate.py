"""An Accelerate loop with TripwireTracker and the Monitor it starts, on CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests import needs

needs.module("accelerate")
from accelerate import Accelerator  # noqa: E402
from accelerate.state import AcceleratorState  # noqa: E402

from collector.integrations.accelerate import TripwireTracker  # noqa: E402
from storage import Database, runs  # noqa: E402
from tests.integrations.helpers import TinyNet, layer_table, scalar_table  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    yield
    AcceleratorState._reset_state(True)  # Accelerate keeps process-wide singletons


def _loader(n=32, batch_size=4):
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 4, 12, generator=gen), torch.randint(0, 3, (n, 4), generator=gen)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size)


def _loop(tracker, **accelerator_options):
    torch.manual_seed(0)
    accelerator = Accelerator(log_with=[tracker], cpu=True, **accelerator_options)
    model = TinyNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer, loader = accelerator.prepare(model, optimizer, _loader())
    accelerator.init_trackers("ignored-by-custom-trackers", config={"lr": 0.1})
    monitor = tracker.watch(accelerator.unwrap_model(model))
    step = 0
    for x, y in loader:
        with accelerator.accumulate(model):
            loss = nn.functional.cross_entropy(model(x).reshape(-1, 3).float(), y.reshape(-1))
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                monitor.log(step, loss=loss)
                accelerator.log({"epoch": 0, "samples": (step + 1) * x.shape[0]}, step=step)
                step += 1
            optimizer.step()
            optimizer.zero_grad()
    accelerator.end_training()
    return monitor


def test_tracker_and_watch_write_one_run_per_optimizer_step(sqlite_url, tmp_path):
    tracker = TripwireTracker(run="acc", db=sqlite_url, every=2, spool_dir=tmp_path)
    monitor = _loop(tracker, gradient_accumulation_steps=2)  # 8 micro-batches, 4 steps
    assert monitor.errors == 0

    db = Database(sqlite_url)
    assert [r.name for r in runs.list_runs(db)] == ["acc"]
    run = runs.find_run(db, "acc")
    assert run.status == "finished" and run.config["lr"] == 0.1
    assert run.config["tripwire"]["integration"] == "accelerate"

    rows = layer_table(sqlite_url, "acc")
    assert set(rows) == {(s, n) for s in (0, 2) for n in ("fc1", "fc2", "head")}
    assert all(sum(row.sa_hist) == 4 * 4 for row in rows.values())  # the first micro-batch only
    scalars = scalar_table(sqlite_url, "acc")
    assert set(scalars["loss"]) == {0, 1, 2, 3}
    assert scalars["samples"] == {0: 4.0, 1: 8.0, 2: 12.0, 3: 16.0}  # from accelerator.log


def test_bf16_autocast_statistics_are_float32_and_finite(sqlite_url, tmp_path):
    tracker = TripwireTracker(run="acc-bf16", db=sqlite_url, every=1, spool_dir=tmp_path)
    _loop(tracker, mixed_precision="bf16")
    rows = layer_table(sqlite_url, "acc-bf16")
    assert {s for s, _ in rows} == set(range(8))
    for row in rows.values():
        assert all(
            isinstance(v, float) and v == v
            for v in (row.grad_norm, row.sigma1, row.sa_mean, row.act_norm_mean)
        )
