"""torch.compile'd models: the check step's sampled forward runs eagerly, nothing recompiles."""

from __future__ import annotations

import pytest
import torch

import collector
from tests import needs
from tests.integrations.helpers import (
    STAT_NAMES,
    TinyNet,
    layer_table,
    tiny_llama,
    train,
    train_llama,
)


def test_a_compiled_model_gives_the_statistics_of_the_eager_one(sqlite_url, tmp_path):
    dynamo = needs.module("torch._dynamo")
    # A monitor of an earlier test that was dropped while armed leaves force_eager behind.
    torch.compiler.set_stance("default")
    dynamo.reset()
    dynamo.utils.counters.clear()
    for name, compiled in (("eager", False), ("compiled", True)):
        torch.manual_seed(0)
        model = TinyNet()
        # The "eager" backend still captures graphs with dynamo, which is what hides hooks.
        runnable = torch.compile(model, backend="eager") if compiled else model
        with collector.watch(runnable, run=name, db=sqlite_url, every=2, spool_dir=tmp_path) as m:
            train(runnable, m, 5)
    assert dynamo.utils.counters["stats"]["unique_graphs"] == 1  # armed steps did not recompile

    eager, compiled = layer_table(sqlite_url, "eager"), layer_table(sqlite_url, "compiled")
    assert eager.keys() == compiled.keys() and {s for s, _ in compiled} == {0, 2, 4}
    for key, row in compiled.items():
        assert sum(row.sa_hist) == 8 * 4, key  # the hooks saw the inputs
        for name in STAT_NAMES:
            assert getattr(row, name) == pytest.approx(getattr(eager[key], name), rel=1e-5), key
    assert dynamo.eval_frame._stance.stance == "default"  # the forced eager stance was restored


def test_a_compiled_hugging_face_model_gives_the_attention_logits_of_the_eager_one(
    sqlite_url, tmp_path
):
    dynamo = needs.module("torch._dynamo")
    needs.module("transformers")
    from storage import Database, runs, stats

    torch.compiler.set_stance("default")
    dynamo.reset()
    stored = {}
    for name, compiled in (("llama-eager", False), ("llama-compiled", True)):
        torch.manual_seed(0)
        model = tiny_llama(num_attention_heads=4)  # 2 key-value heads: grouped queries
        runnable = torch.compile(model, backend="eager") if compiled else model
        with collector.watch(runnable, run=name, db=sqlite_url, every=2, spool_dir=tmp_path) as m:
            train_llama(model, m, runnable=runnable)
        db = Database(sqlite_url)
        series = stats.scalar_series(db, runs.find_run(db, name).id, ["attn_logit_max"])
        stored[name] = {p.step: p.value for p in series}
    assert stored["llama-compiled"].keys() == {0, 2, 4}
    for step, value in stored["llama-eager"].items():
        assert stored["llama-compiled"][step] == pytest.approx(value, rel=1e-5)
    assert dynamo.eval_frame._stance.stance == "default"
