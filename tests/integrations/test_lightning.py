"""lightning.Trainer.fit with TripwireCallback: a tiny LightningModule on CPU."""

from __future__ import annotations

import atexit
import math
import multiprocessing

import pytest
import torch
from torch import nn

from tests import needs

L = needs.module("lightning")

from collector.integrations.lightning import TripwireCallback  # noqa: E402
from storage import Database, runs  # noqa: E402
from tests.integrations.helpers import (  # noqa: E402
    exit_without_shutdown,
    fire_critical_alert,
    layer_table,
    scalar_table,
)

TOKENS = 4


class TinyModule(L.LightningModule):
    def __init__(self, lr: float = 0.05):
        super().__init__()
        self.save_hyperparameters()
        self.fc1 = nn.Linear(12, 32)
        self.fc2 = nn.Linear(32, 3)
        self.losses: list[float] = []
        self.grad_norms: dict[int, dict[str, float]] = {}

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.fc2(torch.relu(self.fc1(x)))
        loss = nn.functional.cross_entropy(logits.reshape(-1, 3), y.reshape(-1))
        self.losses.append(loss.item())
        return loss

    def on_before_optimizer_step(self, optimizer):
        # Runs right after the callbacks' hook, before Lightning clips: the oracle.
        self.grad_norms[self.trainer.global_step] = {
            name: torch.linalg.norm(p.grad).item()
            for name, p in (("fc1", self.fc1.weight), ("fc2", self.fc2.weight))
        }

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def _loader(batch_size: int, n: int = 48):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, TOKENS, 12, generator=gen)
    y = torch.randint(0, 3, (n, TOKENS), generator=gen)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size)


class HeadOutsideForward(TinyModule):
    """``forward`` is the backbone; ``training_step`` applies the head to ``self(x)``."""

    def forward(self, x):
        return torch.relu(self.fc1(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.fc2(self(x)).reshape(-1, 3), y.reshape(-1))
        self.losses.append(loss.item())
        return loss


def _fit(callbacks, *, batch_size=4, module_class=TinyModule, ckpt_path=None, **settings):
    torch.manual_seed(0)
    module = module_class()
    options = {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": 4,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    trainer = L.Trainer(callbacks=callbacks, **(options | settings))
    trainer.fit(module, _loader(batch_size), ckpt_path=ckpt_path)
    return trainer, module


def test_fit_is_named_configured_and_measures_gradients_before_clipping(sqlite_url, tmp_path):
    callback = TripwireCallback(db=sqlite_url, every=2, spool_dir=tmp_path)
    _, module = _fit([callback], gradient_clip_val=0.01)
    assert callback.monitor.errors == 0

    db = Database(sqlite_url)
    run = runs.find_run(db, "TinyModule")
    assert run.status == "finished" and run.last_step == 3
    assert run.config["hparams"] == {"lr": 0.05}
    assert run.config["trainer"]["max_steps"] == 4
    assert run.config["trainer"]["gradient_clip_val"] == 0.01
    assert run.config["tripwire"]["gradients"] == "after unscaling, before clipping"

    rows = layer_table(sqlite_url, "TinyModule")
    assert set(rows) == {(s, n) for s in (0, 2) for n in ("fc1", "fc2")}
    for (step, name), row in rows.items():
        assert row.grad_norm == pytest.approx(module.grad_norms[step][name], rel=1e-6)
        assert None not in (row.sigma1, row.sa_pos, row.act_norm_mean)
    assert math.hypot(rows[(0, "fc1")].grad_norm, rows[(0, "fc2")].grad_norm) > 0.01  # unclipped
    assert sum(rows[(0, "fc1")].sa_hist) == 4 * TOKENS

    scalars = scalar_table(sqlite_url, "TinyModule")
    assert scalars["loss"] == pytest.approx(dict(enumerate(module.losses)))
    assert scalars["lr"] == {s: 0.05 for s in range(4)}


def test_an_output_layer_named_through_the_callback_gets_its_log_z_on_checks(sqlite_url, tmp_path):
    callback = TripwireCallback(db=sqlite_url, every=2, spool_dir=tmp_path, output_layer="fc2")
    _fit([callback])
    log_z = scalar_table(sqlite_url, "TinyModule")["log_z"]
    assert set(log_z) == {0, 2}
    assert all(abs(value - math.log(3)) < 1.0 for value in log_z.values())  # small logits: ~log 3


def test_gradient_accumulation_checks_once_per_step_on_the_first_micro_batch(sqlite_url, tmp_path):
    callback = TripwireCallback(run="accumulated", db=sqlite_url, every=1, spool_dir=tmp_path)
    _, module = _fit([callback], batch_size=2, accumulate_grad_batches=3, max_steps=2)
    rows = layer_table(sqlite_url, "accumulated")
    assert set(rows) == {(s, n) for s in (0, 1) for n in ("fc1", "fc2")}
    assert all(sum(row.sa_hist) == 2 * TOKENS for row in rows.values())  # one micro-batch
    loss = scalar_table(sqlite_url, "accumulated")["loss"]
    assert loss[0] == pytest.approx(sum(module.losses[:3]) / 3, rel=1e-6)
    assert loss[1] == pytest.approx(sum(module.losses[3:6]) / 3, rel=1e-6)


def test_a_head_applied_outside_the_modules_forward_is_sampled_too(sqlite_url, tmp_path):
    # The end of forward() ends the check's eager window; the head, called after it, still
    # gets its first micro-batch's input.
    callback = TripwireCallback(run="head", db=sqlite_url, every=1, spool_dir=tmp_path)
    _fit([callback], module_class=HeadOutsideForward, batch_size=2, accumulate_grad_batches=2)
    rows = layer_table(sqlite_url, "head")
    assert set(rows) == {(s, n) for s in range(4) for n in ("fc1", "fc2")}
    assert all(sum(row.sa_hist) == 2 * TOKENS for row in rows.values())  # one micro-batch


def test_an_epochs_last_shorter_accumulation_window_stores_its_mean_loss(sqlite_url, tmp_path):
    # 24 batches of 2 in 5s: the epoch's fifth optimizer step sums only 4 micro-batches, each
    # still divided by 5 by Lightning.
    callback = TripwireCallback(run="short-window", db=sqlite_url, every=1, spool_dir=tmp_path)
    _, module = _fit(
        [callback], batch_size=2, accumulate_grad_batches=5, max_steps=-1, max_epochs=1
    )
    loss = scalar_table(sqlite_url, "short-window")["loss"]
    assert sorted(loss) == [0, 1, 2, 3, 4]
    assert loss[3] == pytest.approx(sum(module.losses[15:20]) / 5, rel=1e-6)
    assert loss[4] == pytest.approx(sum(module.losses[20:24]) / 4, rel=1e-6)


class _FireAlertAt(L.Callback):
    """Plays the alert engine: a critical alert fires for the run after step ``at``."""

    def __init__(self, tripwire: TripwireCallback, url: str, at: int):
        self.tripwire, self.url, self.at = tripwire, url, at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        monitor = self.tripwire.monitor
        monitor.flush()  # writes now, and the writer polls the alerts after writing
        if trainer.global_step - 1 == self.at:
            fire_critical_alert(self.url, monitor.run_db_id, step=self.at)


def test_halt_on_alert_sets_should_stop(sqlite_url, tmp_path):
    tripwire = TripwireCallback(
        run="halted", db=sqlite_url, every=2, spool_dir=tmp_path, halt_on_alert=True
    )
    trainer, _ = _fit([_FireAlertAt(tripwire, sqlite_url, at=0), tripwire], max_steps=10)
    assert trainer.should_stop and trainer.global_step == 2  # fired after step 0, seen after step 1
    run = runs.find_run(Database(sqlite_url), "halted")
    assert run.status == "failed" and "halt_on_alert" in run.error


class _WorkersSkipInterpreterShutdown(L.Callback):
    """After a successful fit, a ``ddp_spawn`` worker ends through ``exit_without_shutdown`` at
    exit, before Lightning's atexit handler tears gloo down. Registered last, it runs first;
    rank 0 has queued its results by then."""

    def on_fit_end(self, trainer, pl_module):
        if multiprocessing.parent_process() is not None:  # a spawned worker, never pytest itself
            atexit.register(exit_without_shutdown)


@pytest.mark.slow
def test_ddp_spawn_on_two_cpu_processes_writes_one_run(sqlite_url, tmp_path):
    callback = TripwireCallback(run="ddp", db=sqlite_url, every=2, spool_dir=tmp_path)
    _fit([callback, _WorkersSkipInterpreterShutdown()], strategy="ddp_spawn", devices=2)
    (run,) = runs.list_runs(Database(sqlite_url))
    assert run.status == "finished" and run.config["tripwire"]["world_size"] == 2
    assert run.config["trainer"]["strategy"] == "DDPStrategy"
    rows = layer_table(sqlite_url, "ddp")
    assert {s for s, _ in rows} == {0, 2}
    assert sum(rows[(0, "fc1")].sa_hist) == 2 * 4 * TOKENS  # both ranks' batches


def test_fit_from_a_checkpoint_replaces_the_steps_stored_past_it(sqlite_url, tmp_path):
    first = TripwireCallback(db=sqlite_url, every=2, spool_dir=tmp_path)
    trainer, _ = _fit([first], max_steps=2)
    checkpoint = tmp_path / "step2.ckpt"
    trainer.save_checkpoint(checkpoint)
    uid = first.monitor.uid
    options = dict(db=sqlite_url, every=2, spool_dir=tmp_path, run_id=uid)
    _fit([TripwireCallback(**options)], max_steps=6, ckpt_path=checkpoint)  # on to step 5
    assert set(scalar_table(sqlite_url, "TinyModule")["loss"]) == set(range(6))
    # Back to the checkpoint once more, on to step 3 only: steps 4 and 5 were the last attempt's.
    resumed = TripwireCallback(**options)
    _fit([resumed], max_steps=4, ckpt_path=checkpoint)
    assert resumed.monitor.errors == 0
    run = runs.find_run(Database(sqlite_url), uid)
    assert run.status == "finished" and run.last_step == 3
    assert set(scalar_table(sqlite_url, "TinyModule")["loss"]) == set(range(4))
    assert {step for step, _ in layer_table(sqlite_url, "TinyModule")} == {0, 2}
