"""DDP and FSDP2 on 2 gloo processes: the same statistics as one process on the same global batches."""

from __future__ import annotations

import json
import math

import pytest
import torch.multiprocessing as mp

from storage import Database, runs
from tests import needs
from tests.integrations import ddp_worker
from tests.integrations.helpers import (
    STAT_NAMES,
    free_port,
    layer_table,
    scalar_table,
)

pytestmark = pytest.mark.slow


def _assert_same_statistics(url, a, b):
    left, right = layer_table(url, a), layer_table(url, b)
    assert left.keys() == right.keys() and len(left) == 3 * 3  # steps 0, 2, 4 × three layers
    for key, row in left.items():
        other = right[key]
        for name in STAT_NAMES:
            assert getattr(other, name) == pytest.approx(getattr(row, name), rel=1e-5, abs=1e-6), (
                key,
                name,
            )
        assert other.sa_hist == row.sa_hist, key
    for key in ("grad_norm", "weight_norm"):
        assert scalar_table(url, b)[key] == pytest.approx(scalar_table(url, a)[key], rel=1e-5)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    url = f"sqlite:///{tmp / 'tripwire.db'}"
    mp.spawn(ddp_worker.runs, args=(2, free_port(), url, str(tmp)), nprocs=2, join=True)
    return url, tmp


def test_ddp_statistics_equal_one_process_on_the_same_global_batch(ddp_run):
    url, _ = ddp_run
    _assert_same_statistics(url, "single", "ddp")
    row = layer_table(url, "ddp")[(0, "fc1")]
    assert sum(row.sa_hist) == 8 * 4  # both ranks' input rows, not rank 0's alone


def test_ddp_is_written_once_by_rank_0(ddp_run):
    url, _ = ddp_run
    db = Database(url)
    names = sorted(r.name for r in runs.list_runs(db) if r.name != "fsdp")
    per_rank = ["ddp-per-rank/rank0", "ddp-per-rank/rank1"]
    assert names == ["ddp", "ddp-halt", "ddp-nan", *per_rank, "single"]
    config = runs.find_run(db, "ddp").config
    assert config["tripwire"]["world_size"] == 2


def test_per_rank_runs_hold_each_ranks_own_inputs(ddp_run):
    url, _ = ddp_run
    for rank in (0, 1):
        rows = layer_table(url, f"ddp-per-rank/rank{rank}")
        assert sum(rows[(0, "fc1")].sa_hist) == 4 * 4
    # weights and gradients are the same on every rank
    zero, one = layer_table(url, "ddp-per-rank/rank0"), layer_table(url, "ddp-per-rank/rank1")
    assert zero[(2, "fc2")].sigma1 == pytest.approx(one[(2, "fc2")].sigma1, rel=1e-6)
    assert zero[(2, "fc2")].sa_mean != pytest.approx(one[(2, "fc2")].sa_mean, rel=1e-3)


def test_a_single_rank_going_non_finite_is_named(ddp_run):
    url, _ = ddp_run
    scalars = scalar_table(url, "ddp-nan")
    assert scalars["nonfinite_rank"] == {2: 1.0} and scalars["nonfinite_ranks"] == {2: 1.0}
    assert math.isnan(layer_table(url, "ddp-nan")[(2, "fc1")].grad_norm)  # all-reduced to both


def test_halt_on_alert_stops_every_rank_at_the_same_step(ddp_run):
    _, tmp = ddp_run
    stopped = [json.loads((tmp / f"halt{rank}.json").read_text())["stopped"] for rank in (0, 1)]
    assert stopped == [3, 3]  # fired after step 0, agreed at the step-2 check, raised at step 3


@pytest.mark.skipif(ddp_worker.fully_shard is None, reason="FSDP2 (fully_shard) needs torch >= 2.6")
def test_fsdp2_sharded_weights_give_the_statistics_of_the_full_matrix(ddp_run):
    url, _ = ddp_run
    _assert_same_statistics(url, "single", "fsdp")
    db = Database(url)
    layers = {layer.name: layer.shape for layer in runs.layers(db, runs.find_run(db, "fsdp").id)}
    assert layers == {"fc1": [32, 12], "fc2": [32, 32], "head": [3, 32]}  # full shapes, not shards


def test_trainer_under_ddp_writes_one_run_with_both_ranks_inputs(tmp_path):
    needs.module("transformers")
    url = f"sqlite:///{tmp_path / 'tripwire.db'}"
    mp.spawn(ddp_worker.trainer, args=(2, free_port(), url, str(tmp_path)), nprocs=2, join=True)
    assert [json.loads((tmp_path / f"trainer{r}.json").read_text()) for r in (0, 1)] == [
        {"errors": 0},
        {"errors": 0},
    ]
    (run,) = runs.list_runs(Database(url))
    assert run.name == "hf-ddp" and run.status == "finished"
    assert run.config["tripwire"]["world_size"] == 2
    rows = layer_table(url, "hf-ddp")
    assert {s for s, _ in rows} == {2, 4}
    assert (
        sum(rows[(2, "model.layers.0.self_attn.q_proj")].sa_hist) == 2 * 4 * 8
    )  # 2 ranks × 4 × SEQ
