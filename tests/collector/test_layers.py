"""Which layers are monitored (lazy ones included) and how layers sharing one weight count."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn

import collector
from bench.common import rank_0_of_2
from collector import checks
from collector.checks import SpectralState, run_check
from collector.distributed import Ranks, full
from collector.layers import select_layers
from storage import Database, runs, stats
from storage.entities import LAYER_STATISTICS


def _train(model, monitor, steps: int = 3) -> None:
    gen = torch.Generator().manual_seed(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(steps):
        loss = model(torch.randn(6, 8, generator=gen)).square().mean()
        loss.backward()
        monitor.log(step, loss=loss)
        opt.step()
        opt.zero_grad()
    monitor.close()


def _layer_rows(url: str, run: str) -> list:
    db = Database(url)
    return stats.layer_stats(db, runs.find_run(db, run).id)


# -- lazy layers ---------------------------------------------------------------------------------


def test_a_lazy_layer_not_run_yet_is_skipped_with_one_warning(sqlite_url, tmp_path, caplog):
    torch.manual_seed(0)
    model = nn.Sequential(nn.LazyLinear(16), nn.ReLU(), nn.Linear(16, 4), nn.LazyLinear(3))
    with caplog.at_level(logging.WARNING, logger="tripwire.collector"):
        monitor = collector.watch(model, run="lazy", db=sqlite_url, every=1, spool_dir=tmp_path)
    assert [layer.name for layer in monitor.layers] == ["2"]
    lazy = [r.getMessage() for r in caplog.records if "lazy" in r.getMessage()]
    assert len(lazy) == 1
    assert "(0, 3)" in lazy[0] and "forward pass before watch()" in lazy[0]
    _train(model, monitor)
    assert monitor.errors == 0
    assert {row.layer for row in _layer_rows(sqlite_url, "lazy")} == {"2"}


def test_a_lazy_layer_filtered_out_by_name_is_not_warned_of(caplog):
    model = nn.Sequential(nn.LazyLinear(16), nn.ReLU(), nn.Linear(16, 4))
    with caplog.at_level(logging.WARNING, logger="tripwire.collector"):
        assert [layer.name for layer in select_layers(model, exclude="0")] == ["2"]
    assert not caplog.records


def test_a_lazy_layer_after_its_first_forward_is_monitored_like_a_linear(sqlite_url, tmp_path):
    torch.manual_seed(0)
    lazy = nn.Sequential(nn.LazyLinear(16), nn.ReLU(), nn.Linear(16, 4))
    lazy(torch.randn(2, 8))  # the first batch gives it its shape
    plain = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    plain.load_state_dict(lazy.state_dict())
    for name, model in (("lazy", lazy), ("plain", plain)):
        monitor = collector.watch(model, run=name, db=sqlite_url, every=1, spool_dir=tmp_path)
        assert [layer.spec() for layer in monitor.layers] == [
            {"name": "0", "position": 0, "kind": "Linear", "shape": [16, 8]},
            {"name": "2", "position": 1, "kind": "Linear", "shape": [4, 16]},
        ]
        _train(model, monitor)
        assert monitor.errors == 0
    got, want = _layer_rows(sqlite_url, "lazy"), _layer_rows(sqlite_url, "plain")
    assert [(r.step, r.layer) for r in got] == [(s, n) for s in range(3) for n in ("0", "2")]
    for a, b in zip(got, want, strict=True):
        assert (a.step, a.layer, a.sa_hist) == (b.step, b.layer, b.sa_hist)
        for name in LAYER_STATISTICS:
            x, y = getattr(a, name), getattr(b, name)
            assert x == y or (math.isnan(x) and math.isnan(y)), name


# -- layers sharing one weight -------------------------------------------------------------------


class SharedWeight(nn.Module):
    """``a`` and ``b`` are two modules holding one weight Parameter (tied, or one layer reached
    under two names); their biases are their own."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 8)
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.b.weight = self.a.weight
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        return self.out(self.b(torch.relu(self.a(torch.relu(self.inp(x))))))


def _distinct_norms(model: SharedWeight) -> tuple[float, float]:
    """The global weight and gradient norms over distinct weights, as ``clip_grad_norm_``
    would count them."""
    weights = [model.inp.weight, model.a.weight, model.out.weight]  # FSDP2's: gathered
    weight = torch.linalg.vector_norm(torch.cat([full(w).detach().flatten() for w in weights]))
    grad = torch.linalg.vector_norm(torch.cat([full(w.grad).flatten() for w in weights]))
    return float(weight), float(grad)


def test_a_weight_shared_by_two_layers_counts_once_in_the_stored_global_norms(sqlite_url, tmp_path):
    torch.manual_seed(0)
    model = SharedWeight()
    monitor = collector.watch(model, run="shared", db=sqlite_url, every=1, spool_dir=tmp_path)
    assert [layer.name for layer in monitor.layers] == ["inp", "a", "b", "out"]
    loss = model(torch.randn(6, 8)).square().mean()
    loss.backward()
    monitor.log(0, loss=loss)
    monitor.close()
    weight, grad = _distinct_norms(model)
    db = Database(sqlite_url)
    run = runs.find_run(db, "shared")
    scalars = {
        p.key: p.value for p in stats.scalar_series(db, run.id, ["weight_norm", "grad_norm"])
    }
    assert scalars["weight_norm"] == pytest.approx(weight, rel=1e-6)
    assert scalars["grad_norm"] == pytest.approx(grad, rel=1e-6)
    rows = {r.layer: r for r in _layer_rows(sqlite_url, "shared")}
    assert len(rows) == 4 and rows["a"].weight_norm == rows["b"].weight_norm


def _fsdp2(model):
    fully_shard = pytest.importorskip("torch.distributed.fsdp").fully_shard
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    fully_shard(model)  # one process: DTensor shards, the sharded path's norms and gathers
    return Ranks(rank=0, world=1, reduces=True)


@pytest.mark.parametrize("path", ["stacked", "per-layer", "ddp", "fsdp2"])
def test_global_norms_count_a_shared_weight_once_on_every_path(monkeypatch, path):
    torch.manual_seed(0)
    model = SharedWeight()
    ranks = None
    if path == "per-layer":
        monkeypatch.setattr(checks, "_batchable", lambda *_: False)
    elif path == "ddp":
        ranks = rank_0_of_2()
    try:
        if path == "fsdp2":
            ranks = _fsdp2(model)
        model(torch.randn(6, 8)).square().mean().backward()
        layers = select_layers(model)
        if path == "fsdp2":
            assert ranks.sharded([layer.weight for layer in layers])
        rows, totals = run_check(layers, {}, SpectralState(), ranks=ranks, step=0)
        weight, grad = _distinct_norms(model)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    assert [row["layer"] for row in rows] == ["inp", "a", "b", "out"]
    assert totals["weight_norm"] == pytest.approx(weight, rel=1e-5)
    assert totals["grad_norm"] == pytest.approx(grad, rel=1e-5)
