"""GPT-2's ``Conv1D`` layers (``x @ W`` with W stored in × out) are monitored like ``nn.Linear``."""

from __future__ import annotations

import math

import pytest
import torch

from tests import needs

needs.module("transformers")
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

import collector  # noqa: E402
from storage import Database, runs  # noqa: E402
from tests.integrations.helpers import layer_table  # noqa: E402


def test_gpt2_conv1d_layers_get_every_statistic_in_linear_orientation(sqlite_url, tmp_path):
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():  # a clear top singular direction, so power iteration pins σ1 down
        for m in model.modules():
            if type(m).__name__ == "Conv1D":
                u, v = torch.randn(m.weight.shape[0], 1), torch.randn(1, m.weight.shape[1])
                m.weight.add_(0.5 * (u / u.norm()) @ (v / v.norm()))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    weights = {}
    monitor = collector.watch(model, run="gpt2", db=sqlite_url, every=5, spool_dir=tmp_path)
    for step in range(11):
        idx = torch.randint(0, 64, (4, 16), generator=gen)
        loss = model(idx, labels=idx).loss
        loss.backward()
        if step % 5 == 0:
            weights[step] = {
                n: m.weight.detach().clone()
                for n, m in model.named_modules()
                if type(m).__name__ == "Conv1D"
            }
        monitor.log(step, loss=loss)
        opt.step()
        opt.zero_grad()
    monitor.close()
    assert monitor.errors == 0

    db = Database(sqlite_url)
    run = runs.find_run(db, "gpt2")
    registered = {layer.name: layer for layer in runs.layers(db, run.id)}
    conv = sorted(weights[0])
    assert set(conv) == {
        f"transformer.h.{i}.{n}"
        for i in range(2)
        for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    }
    assert set(conv) | {"lm_head"} == set(registered)
    assert registered["transformer.h.0.attn.c_attn"].shape == [96, 32]  # out × in, as nn.Linear
    assert registered["transformer.h.0.attn.c_attn"].kind == "Conv1D"

    rows = layer_table(sqlite_url, "gpt2")
    for step in (0, 5, 10):
        for name in conv:
            row = rows[(step, name)]
            w = weights[step][name]
            assert row.sigma1 == pytest.approx(torch.linalg.svdvals(w)[0].item(), rel=1e-3)
            assert row.weight_norm == pytest.approx(w.norm().item(), rel=1e-5)
            assert row.sa_hist is not None and sum(row.sa_hist) > 0  # its inputs were sampled
            assert row.grad_norm is not None and row.grad_norm > 0
            if step:
                exact = ((w - weights[step - 5][name]).norm() / w.norm()).item() / 5
                assert row.update_ratio == pytest.approx(exact, rel=0.5)
            else:
                assert math.isnan(row.update_ratio)
