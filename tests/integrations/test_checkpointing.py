"""Activation checkpointing re-runs layers in the backward pass: a check samples the forward's
inputs once and stores what the same run without checkpointing stores."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import collector
from storage import Database, runs, stats
from tests import needs
from tests.integrations.helpers import STAT_NAMES, layer_table, tiny_llama, train, train_llama


class CheckpointedNet(nn.Module):
    """TinyNet's layers, ``fc2`` inside a checkpointed segment (``mode``: None for none,
    ``"reentrant"`` or ``"non-reentrant"``); its input needs a gradient, as reentrant
    checkpointing asks."""

    def __init__(self, mode: str | None) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(12, 32), nn.Linear(32, 32), nn.Linear(32, 3)
        self.mode = mode

    def segment(self, h):
        return nn.functional.gelu(self.fc2(h))

    def forward(self, x):
        h = nn.functional.gelu(self.fc1(x))
        if self.mode is None:
            return self.head(self.segment(h))
        return self.head(checkpoint(self.segment, h, use_reentrant=self.mode == "reentrant"))


@pytest.mark.parametrize("mode", ["reentrant", "non-reentrant"])
def test_a_checkpointed_model_gives_the_statistics_of_the_plain_one(mode, sqlite_url, tmp_path):
    calls = []
    for name, ckpt in (("plain", None), (mode, mode)):
        torch.manual_seed(0)
        model = CheckpointedNet(ckpt)
        model.fc2.register_forward_hook(lambda *_, n=name: calls.append(n))
        with collector.watch(model, run=name, db=sqlite_url, every=2, spool_dir=tmp_path) as m:
            train(model, m, 5)
            assert not m.errors
    assert calls.count(mode) == 2 * calls.count("plain")  # the backward did re-run fc2

    plain, checkpointed = layer_table(sqlite_url, "plain"), layer_table(sqlite_url, mode)
    assert plain.keys() == checkpointed.keys() and {s for s, _ in plain} == {0, 2, 4}
    for key, row in checkpointed.items():
        assert sum(row.sa_hist) == 8 * 4, key  # one forward's rows, not the recompute's too
        for stat in STAT_NAMES:
            assert getattr(row, stat) == pytest.approx(getattr(plain[key], stat), rel=1e-6), key


def test_hugging_face_gradient_checkpointing_changes_nothing_stored(sqlite_url, tmp_path):
    needs.module("transformers")
    stored, calls = {}, []
    for name in ("llama", "llama-checkpointed"):
        torch.manual_seed(0)
        model = tiny_llama()
        model.model.layers[0].self_attn.q_proj.register_forward_hook(
            lambda *_, n=name: calls.append(n)
        )
        if name.endswith("checkpointed"):  # the older name is deprecated in transformers 5
            enable = getattr(model, "activation_checkpointing_enable", None)
            (enable or model.gradient_checkpointing_enable)()
        model.train()
        with collector.watch(model, run=name, db=sqlite_url, every=2, spool_dir=tmp_path) as m:
            train_llama(model, m)
        db = Database(sqlite_url)
        series = stats.scalar_series(db, runs.find_run(db, name).id, ["attn_logit_max", "log_z"])
        stored[name] = ({(p.key, p.step): p.value for p in series}, layer_table(sqlite_url, name))
    assert calls.count("llama-checkpointed") == 2 * calls.count("llama")
    (scalars, layers), (scalars_ckpt, layers_ckpt) = stored["llama"], stored["llama-checkpointed"]
    assert {key for key, _ in scalars} == {"attn_logit_max", "log_z"}
    assert scalars_ckpt == pytest.approx(scalars, rel=1e-5)
    assert layers.keys() == layers_ckpt.keys()
    for key, row in layers_ckpt.items():
        for stat in STAT_NAMES:
            assert getattr(row, stat) == pytest.approx(getattr(layers[key], stat), rel=1e-5), key
