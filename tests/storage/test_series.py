"""Bounded, downsampled dashboard reads, on SQLite and on PostgreSQL."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

from storage import runs, series, stats
from storage._models import SqlAlert
from storage.db import utcnow

EDGES = [-1.0, -0.5, 0.0, 0.5, 1.0]
LAYERS = ["blocks.0.attn", "blocks.0.mlp", "head"]
SPIKE_STEP, NAN_STEP, INF_STEP = 1234, 1500, 1601


def _loss(step: int) -> float:
    if step == SPIKE_STEP:
        return 1000.0
    if step == NAN_STEP:
        return math.nan
    if step == INF_STEP:
        return math.inf
    return 5.0 - step / 1000


def _write_run(db, *, name="r", steps=2000, every=10, status="running", started=None):
    started = started or utcnow()
    with db.session() as s:
        run_id = runs.ensure_run(
            s,
            uid=f"uid-{name}",
            project="p",
            name=name,
            started_at=started,
            every=every,
            sa_bin_edges=EDGES,
        )
        ids = runs.ensure_layers(
            s, run_id, [{"name": n, "position": i} for i, n in enumerate(LAYERS)]
        )
        rows = []
        for step in range(steps):
            rows.append(
                {"step": step, "key": "loss", "value": _loss(step), "wall_time": float(step)}
            )
            rows.append({"step": step, "key": "lr", "value": 1e-3, "wall_time": float(step)})
        stats.write_scalars(s, run_id, rows)
        layer_rows = []
        for step in range(0, steps, every):
            for i, layer in enumerate(LAYERS):
                collapsed = layer == "blocks.0.mlp" and step >= NAN_STEP
                layer_rows.append(
                    {
                        "layer": layer,
                        "step": step,
                        "wall_time": float(step),
                        "grad_norm": math.nan if (layer == "head" and step == 1000) else 1.0 + i,
                        "sa_imbalance": 0.95 if collapsed else 0.05,
                        "sa_pos": 0.975 if collapsed else 0.5,
                        "sigma1": 2.0 + step / 1000,
                        "sa_hist": [0, 0, 1, 99] if collapsed else [25, 25, 25, 25],
                    }
                )
        stats.write_layer_stats(s, run_id, ids, layer_rows)
        runs.touch(s, run_id, last_step=steps - 1, at=started)
        if status != "running":
            runs.finish(s, run_id, status=status, at=started + timedelta(minutes=5))
    return run_id


def test_short_series_come_back_whole(db):
    run_id = _write_run(db, steps=300)
    df = series.scalar_frame(db, run_id, ["loss", "lr"], max_points=1000)
    assert len(df[df.key == "loss"]) == 300
    assert df[df.key == "loss"].step.tolist() == list(range(300))


def test_long_series_are_bounded_and_keep_spikes_nan_and_inf(db):
    run_id = _write_run(db)
    df = series.scalar_frame(db, run_id, ["loss"], max_points=200)
    loss = df[df.key == "loss"]
    assert len(loss) <= 200
    assert loss.step.is_monotonic_increasing
    by_step = dict(zip(loss.step, loss.value, strict=True))
    assert by_step[SPIKE_STEP] == 1000.0
    assert math.isnan(by_step[NAN_STEP])
    assert by_step[INF_STEP] == math.inf


def test_step_range_is_inclusive(db):
    run_id = _write_run(db, steps=300)
    df = series.scalar_frame(db, run_id, ["loss"], start=100, end=199)
    assert df.step.min() == 100 and df.step.max() == 199


def test_unknown_run_or_key_gives_an_empty_frame(db):
    df = series.scalar_frame(db, 999, ["loss"])
    assert df.empty and list(df.columns) == ["step", "key", "value"]


def test_layer_matrix_is_in_model_order_and_keeps_collapse_and_nan(db):
    run_id = _write_run(db)
    grids = series.layer_matrices(db, run_id, ["sa_imbalance", "grad_norm"], max_steps=50)
    sa = grids["sa_imbalance"]
    assert sa.layers == LAYERS
    assert sa.bucketed and len(sa.steps) <= 50
    assert sa.steps == sorted(sa.steps)
    mlp = sa.z[1]
    first_collapsed = next(j for j, v in enumerate(mlp) if v > 0.5)
    assert sa.steps[first_collapsed] <= NAN_STEP < sa.steps[first_collapsed] + 2000 // 50 + 10
    assert max(sa.z[0]) == pytest.approx(0.05)
    head = grids["grad_norm"].z[2]
    assert any(v is not None and math.isnan(v) for v in head)


def test_layer_matrix_small_runs_keep_every_check(db):
    run_id = _write_run(db, steps=200)
    grid = series.layer_matrix(db, run_id, "sigma1", max_steps=400)
    assert not grid.bucketed
    assert grid.steps == list(range(0, 200, 10))


def test_layer_matrix_rejects_unknown_statistics(db):
    with pytest.raises(ValueError, match="unknown layer statistic"):
        series.layer_matrix(db, 1, "nope")


def test_layer_matrix_of_a_run_without_checks_is_empty(db):
    grid = series.layer_matrix(db, 12345, "sa_imbalance")
    assert grid.layers == [] and grid.steps == []


def test_layer_lines_for_chosen_layers(db):
    run_id = _write_run(db, steps=500)
    df = series.layer_lines(db, run_id, ["head"], "sigma1")
    assert set(df.layer) == {"head"}
    assert len(df) == 50


def test_hist_series_keeps_the_most_collapsed_check_per_bucket(db):
    run_id = _write_run(db)
    h = series.sa_hist_series(db, run_id, "blocks.0.mlp", max_steps=20)
    assert h.bin_edges == EDGES
    assert 0 < len(h.steps) <= 20
    assert all(len(c) == len(EDGES) - 1 for c in h.counts)
    collapsed = [s for s, c in zip(h.steps, h.counts, strict=True) if c == [0, 0, 1, 99]]
    assert collapsed and min(collapsed) >= NAN_STEP
    assert h.sa_pos[-1] == pytest.approx(0.975)


def test_hist_series_of_a_short_run_is_whole(db):
    run_id = _write_run(db, steps=100)
    h = series.sa_hist_series(db, run_id, "head")
    assert h.steps == list(range(0, 100, 10))


def test_runs_overview_statuses_last_loss_and_open_alerts(db):
    now = utcnow()
    live = _write_run(db, name="live", steps=100, started=now)
    old = _write_run(db, name="old", steps=100, started=now - timedelta(hours=2))
    done = _write_run(
        db, name="done", steps=1501, status="finished", started=now - timedelta(hours=3)
    )
    with db.session() as s:
        for sev, state in [
            ("critical", "firing"),
            ("warning", "firing"),
            ("info", "pending"),
            ("critical", "resolved"),
        ]:
            s.add(
                SqlAlert(
                    run_id=done,
                    predictor="sa_collapse",
                    layer="head",
                    fingerprint=sev + state,
                    severity=sev,
                    state=state,
                    first_step=1,
                    last_step=2,
                    created_at=now,
                    updated_at=now,
                )
            )
    rows = {r["name"]: r for r in series.runs_overview(db, now=now)}
    assert rows["live"]["status"] == "running"
    assert rows["old"]["status"] == "stalled"
    assert rows["done"]["status"] == "finished"
    assert rows["live"]["last_step"] == 99
    assert rows["live"]["last_loss"] == pytest.approx(_loss(99))
    assert math.isnan(rows["done"]["last_loss"])
    assert (rows["done"]["critical"], rows["done"]["warning"], rows["done"]["pending"]) == (1, 1, 1)
    assert rows["done"]["duration_s"] == pytest.approx(300)
    assert [r["name"] for r in series.runs_overview(db, now=now, status="stalled")] == ["old"]
    assert [r["name"] for r in series.runs_overview(db, now=now, name_contains="liv")] == ["live"]
    # in any case, on both backends (PostgreSQL's LIKE minds case, SQLite's does not)
    assert [r["name"] for r in series.runs_overview(db, now=now, name_contains="LIV")] == ["live"]
    assert [r["id"] for r in series.runs_overview(db, now=now, status="running")] == [live]
    assert old


def test_bucket_aggregates_treat_null_nan_and_inf_alike_on_both_backends(db):
    with db.session() as s:
        run_id = runs.ensure_run(s, uid="agg", project="p", name="agg", started_at=utcnow())
        ids = runs.ensure_layers(s, run_id, [{"name": "l", "position": 0}])
        values = {0: None, 1: 1.0, 2: math.nan, 3: None, 4: None, 5: None, 6: -math.inf, 7: None}
        rows = [
            {"layer": "l", "step": step, "grad_norm": v, "stable_rank": v}
            for step, v in values.items()
        ]
        stats.write_layer_stats(s, run_id, ids, rows)
    grids = series.layer_matrices(
        db, run_id, ["grad_norm", "stable_rank"], max_steps=3, agg={"stable_rank": "min"}
    )
    # buckets of the 8 steps: [0, 1, 2], [3, 4, 5], [6, 7]
    assert grids["grad_norm"].steps == [0, 3, 6]
    high, low = grids["grad_norm"].z[0], grids["stable_rank"].z[0]
    assert math.isnan(high[0]) and low[0] == 1.0
    assert high[1] is None and low[1] is None
    assert high[2] == -math.inf and low[2] == -math.inf


def test_runs_overview_calls_a_run_stalled_when_the_stalled_alert_does(db):
    from alerts.predictors.stalled import PARAMS, stalled

    now = utcnow()
    _write_run(db, name="quiet", steps=10, started=now - timedelta(minutes=7))
    (row,) = series.runs_overview(db, now=now)
    assert row["status"] == "stalled"
    assert stalled(runs.find_run(db, "quiet"), now, PARAMS)[0].holds
    assert series.runs_overview(db, now=now, stalled_after_s=3600)[0]["status"] == "running"
