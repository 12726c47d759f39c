"""The Llama-style runs (bench/prediction/llama.py) train what they say, through the collector."""

from __future__ import annotations

import dataclasses
import math

from tests import needs

needs.module("transformers")  # in CI a missing transformers fails, not skips

from bench.prediction.evaluate import loss_series  # noqa: E402
from bench.prediction.llama import FAMILIES, SEEDS, llama_runs  # noqa: E402
from bench.prediction.record import PROJECT, train_into  # noqa: E402
from bench.prediction.runs import build, optimizer  # noqa: E402
from storage import runs as run_store  # noqa: E402
from storage import stats  # noqa: E402
from storage.db import Database  # noqa: E402
from tests.bench.alerts import backtest_alert  # noqa: E402


def test_every_family_at_every_peak_and_seed():
    runs = llama_runs()
    assert len(runs) == sum(len(peaks) for _, peaks in FAMILIES.values()) * len(SEEDS)
    assert len({r.name for r in runs}) == len(runs)
    attn = next(r for r in runs if r.name == "llama-attn-0.3-s2")
    model, _ = build(attn)
    groups = optimizer(attn, model).param_groups
    ramped = {id(p) for p in groups[1]["params"]}
    names = [n for n, p in model.named_parameters() if id(p) in ramped]
    assert names and all(".self_attn." in n for n in names)
    assert {n.rsplit(".", 2)[-2] for n in names} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert groups[1]["schedule"].peak == 0.3 and groups[0]["schedule"].peak is None


def test_a_short_llama_run_records_every_projection_and_both_logit_signals(tmp_path):
    spec = dataclasses.replace(llama_runs()[0], steps=21)
    db = Database(f"sqlite:///{tmp_path / 'llama.db'}")
    db.ensure_schema()
    train_into(spec, db.url)

    run = run_store.find_run(db, spec.name, project=PROJECT)
    losses = loss_series(db, run.id)
    assert len(losses) == 21 and losses[-1] < losses[0]  # it learns
    layers = {r.layer for r in stats.layer_stats(db, run.id)}
    block = "lm.model.layers.1"
    attention = {f"{block}.self_attn.{p}_proj" for p in ("q", "k", "v", "o")}
    mlp = {f"{block}.mlp.{p}_proj" for p in ("gate", "up", "down")}
    assert attention | mlp | {"lm.lm_head"} <= layers
    for signal in ("log_z", "attn_logit_max"):  # measured by the collector on check steps
        points = stats.scalar_series(db, run.id, keys=[signal])
        assert [p.step for p in points] == [0, 10, 20], signal
        assert all(math.isfinite(p.value) and p.value > 0 for p in points), signal


def test_end_gap_is_what_a_run_kept_of_its_climb():
    from bench.prediction.llama import end_gap

    settled = [3.0] * 60 + [2.0] * 100  # best smoothed loss 2.0 once the EMA has caught up
    assert abs(end_gap(settled + [2.5] * 50) - 0.5) < 1e-3
    assert abs(end_gap(settled + [2.0] * 50)) < 1e-3


def test_the_healthy_runs_are_the_lowest_peaks_that_did_not_explode():
    from bench.prediction.llama import HEALTHY_PEAK, healthy
    from bench.prediction.runs import DIVERGENT

    runs = llama_runs()
    calm = healthy(runs)
    assert len(calm) == len(FAMILIES) * len(SEEDS)
    assert all(f"-{HEALTHY_PEAK:g}-" in r.name for r in calm)
    exploded = dataclasses.replace(calm[0], kind=DIVERGENT)  # on another CPU it might
    assert exploded not in healthy([exploded, *runs[1:]])


def test_the_section_says_what_the_held_runs_did():
    from bench.prediction.__main__ import DEFAULT_SET, EAGER_SET
    from bench.prediction.evaluate import Score, outcome
    from bench.prediction.llama import CALIBRATED, section
    from bench.prediction.runs import DIVERGENT

    runs = llama_runs()
    calm, rang, cut_short = runs[0], runs[2], runs[3]  # all at peaks that did not explode
    boom = dataclasses.replace(runs[4], kind=DIVERGENT)
    alert = [backtest_alert(300)]
    outcomes = [
        outcome(calm, None, []),
        outcome(rang, None, alert),
        outcome(cut_short, None, alert),
        outcome(boom, 340, alert),
    ]
    scores = {name: Score(name, outcomes) for name in (DEFAULT_SET, EAGER_SET, "attention_logits")}
    names = [calm.name, rang.name, cut_short.name, boom.name]
    text = section(
        scores,
        Score(CALIBRATED, outcomes[1:]),
        figures={
            calm.name: (40.0, math.nan, 0.2),
            rang.name: (120.0, 3.0, 0.5),
            cut_short.name: (900.0, 12.5, 0.7),
            boom.name: (2500.0, 20.0, 0.4),
        },
        gaps=dict(zip(names, (0.05, 0.1, 0.4, 0.0), strict=True)),
        held={rang.name: (None, 0.12), cut_short.name: (620, 1.5)},
    )
    assert "1 of the 2 trained on" in " ".join(text.split())
    assert f"({cut_short.name} exploded)" in text
    rows: dict[str, str] = {}  # each run's row of the first table that names it
    for line in text.splitlines():
        if line.startswith("| "):
            rows.setdefault(line.split(" | ")[0][2:], line)
    assert rows[rang.name].endswith(
        "| 120 | 3.0× | 0.50 | 0.10 | false alarm | trains on (+0.12) |"
    )
    assert rows[cut_short.name].endswith(
        "| 900 | 12.5× | 0.70 | 0.40 | false alarm | **explodes at 620** |"
    )
    assert rows[calm.name].endswith("| 40 | – | 0.20 | 0.05 | quiet | – |")
    assert "40–900 on the runs that did not explode" in " ".join(text.split())
