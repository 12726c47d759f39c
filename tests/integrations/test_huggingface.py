"""transformers.Trainer with TripwireCallback: a tiny Llama built from a config, trained on CPU."""

from __future__ import annotations

import math

import pytest
import torch

from tests import needs

needs.module("transformers")
from transformers import (  # noqa: E402
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

import collector  # noqa: E402
from collector.integrations.huggingface import TripwireCallback  # noqa: E402
from storage import Database, runs  # noqa: E402
from tests.integrations.helpers import (  # noqa: E402
    fire_critical_alert,
    layer_table,
    scalar_table,
    tiny_llama,
)

SEQ = 8
LINEARS = 2 * 7 + 1  # q, k, v, o, gate, up, down per block, and the head


def _model():
    torch.manual_seed(0)
    return tiny_llama()


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 64):
        gen = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 64, (n, SEQ), generator=gen)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _train(tmp_path, callbacks, resume_from=None, **overrides):
    settings = {
        "output_dir": str(tmp_path / "out"),
        "run_name": "tiny-llama",
        "max_steps": 4,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-3,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
    }
    args = TrainingArguments(**(settings | overrides))
    trainer = Trainer(model=_model(), args=args, train_dataset=_Tokens(), callbacks=callbacks)
    trainer.train(resume_from_checkpoint=resume_from)
    return trainer


def test_trainer_run_is_named_configured_and_checked_every_n_steps(sqlite_url, tmp_path):
    callback = TripwireCallback(db=sqlite_url, every=2, spool_dir=tmp_path, config={"note": "ci"})
    trainer = _train(tmp_path, [callback], max_grad_norm=0.01)
    assert callback.monitor.errors == 0

    db = Database(sqlite_url)
    run = runs.find_run(db, "tiny-llama")
    assert run.status == "finished" and run.last_step == 4
    assert run.config["training_args"]["learning_rate"] == 1e-3
    assert run.config["model"]["model_type"] == "llama" and run.config["model"]["hidden_size"] == 32
    assert run.config["note"] == "ci"
    assert run.config["tripwire"]["gradients"] == "after unscaling and clipping"
    assert len(runs.layers(db, run.id)) == LINEARS

    rows = layer_table(sqlite_url, "tiny-llama")
    assert {step for step, _ in rows} == {2, 4}  # Trainer's global_step, every 2
    for row in rows.values():
        assert None not in (row.grad_norm, row.sigma1, row.sa_imbalance, row.act_max)
    q = rows[(2, "model.layers.0.self_attn.q_proj")]
    assert sum(q.sa_hist) == 4 * SEQ  # every token of the batch (sample_size is larger)

    scalars = scalar_table(sqlite_url, "tiny-llama")
    assert {2, 4} <= set(scalars["loss"]) and {2, 4} <= set(scalars["lr"])  # logged on checks
    logged = {e["step"]: e for e in trainer.state.log_history if "grad_norm" in e}
    assert scalars["grad_norm"][2] == pytest.approx(logged[2]["grad_norm"])  # Trainer's own
    # ...which is before clipping, while the per-layer norms were measured after it.
    clipped = math.sqrt(sum(rows[(2, name)].grad_norm ** 2 for _, name in rows if _ == 2))
    assert clipped <= 0.01 * 1.001 < scalars["grad_norm"][2]
    # log Z of lm_head (found by get_output_embeddings()), near log(vocabulary) this early
    assert set(scalars["log_z"]) == {2, 4}
    assert abs(scalars["log_z"][2] - math.log(trainer.model.config.vocab_size)) < 1.0
    # the largest attention logit, measured inside transformers' own (sdpa) attention modules
    assert set(scalars["attn_logit_max"]) == {2, 4} and 0 < scalars["attn_logit_max"][2] < 10


class _FireAlertAt(TrainerCallback):
    """Plays the alert engine: a critical alert fires for the run after step ``at``."""

    def __init__(self, tripwire: TripwireCallback, url: str, at: int):
        self.tripwire, self.url, self.at = tripwire, url, at

    def on_step_end(self, args, state, control, **kwargs):
        monitor = self.tripwire.monitor
        monitor.flush()  # writes now, and the writer polls the alerts after writing
        if state.global_step == self.at:
            fire_critical_alert(self.url, monitor.run_db_id, step=self.at)


def test_halt_on_alert_saves_a_checkpoint_and_stops_training(sqlite_url, tmp_path):
    tripwire = TripwireCallback(db=sqlite_url, every=2, spool_dir=tmp_path, halt_on_alert=True)
    # The alert fires after step 1; the step-2 check's write polls it; Trainer stops at step 2.
    trainer = _train(tmp_path, [_FireAlertAt(tripwire, sqlite_url, at=1), tripwire], max_steps=10)
    assert trainer.state.global_step == 2
    assert (tmp_path / "out" / "checkpoint-2").is_dir()
    run = runs.find_run(Database(sqlite_url), "tiny-llama")
    assert run.status == "failed" and "halt_on_alert" in run.error and "non_finite" in run.error


def test_gradient_accumulation_samples_the_first_micro_batch_once_per_optimizer_step(
    sqlite_url, tmp_path
):
    callback = TripwireCallback(db=sqlite_url, every=1, spool_dir=tmp_path)
    _train(
        tmp_path,
        [callback],
        per_device_train_batch_size=2,
        gradient_accumulation_steps=3,
        max_steps=2,
    )
    rows = layer_table(sqlite_url, "tiny-llama")
    assert {step for step, _ in rows} == {1, 2}  # one check per optimizer step
    for step in (1, 2):
        assert (
            sum(rows[(step, "model.layers.1.mlp.down_proj")].sa_hist) == 2 * SEQ
        )  # one micro-batch


class _Wrapper(torch.nn.Module):
    """A Hugging Face model held by a plain module, as a LightningModule holds it."""

    def __init__(self):
        super().__init__()
        self.net = _model()

    def forward(self, ids):
        return self.net(input_ids=ids, labels=ids)


def test_auto_finds_the_output_layer_of_a_hugging_face_model_inside_another_module(
    sqlite_url, tmp_path
):
    wrapper = _Wrapper()
    monitor = collector.watch(wrapper, run="wrapped", db=sqlite_url, every=1, spool_dir=tmp_path)
    ids = _Tokens().ids[:4]
    out = wrapper(ids)
    out.loss.backward()
    monitor.log(0, loss=out.loss)
    monitor.close()
    expected = float(collector.log_z(out.logits))
    scalars = scalar_table(sqlite_url, "wrapped")
    assert scalars["log_z"][0] == pytest.approx(expected, rel=1e-5)
    assert scalars["attn_logit_max"][0] > 0  # the attention modules are found inside it too


def test_resume_from_checkpoint_replaces_the_steps_past_it(sqlite_url, tmp_path):
    first = TripwireCallback(db=sqlite_url, every=2, spool_dir=tmp_path)
    _train(tmp_path, [first], max_steps=8, save_strategy="steps", save_steps=4, logging_steps=1)
    uid = first.monitor.uid
    assert set(scalar_table(sqlite_url, "tiny-llama")["loss"]) == set(range(1, 9))

    # Back to checkpoint-4, on to step 6 only: steps 7 and 8 were the first attempt's.
    resumed = TripwireCallback(db=sqlite_url, every=2, spool_dir=tmp_path, run_id=uid)
    checkpoint = str(tmp_path / "out" / "checkpoint-4")
    _train(tmp_path, [resumed], max_steps=6, logging_steps=1, resume_from=checkpoint)
    assert resumed.monitor.errors == 0
    run = runs.find_run(Database(sqlite_url), uid)
    assert run.status == "finished" and run.last_step == 6
    assert set(scalar_table(sqlite_url, "tiny-llama")["loss"]) == set(range(1, 7))
    assert {step for step, _ in layer_table(sqlite_url, "tiny-llama")} == {2, 4, 6}
