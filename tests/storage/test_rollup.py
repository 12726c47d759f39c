"""The layer-statistic rollup, on SQLite and on PostgreSQL: it equals the raw rows it summarises."""

from __future__ import annotations

import math
import random

import pytest
from sqlalchemy import select

from storage import Database, migrate, rollup, runs, series, stats
from storage._models import SqlLayerStat, SqlLayerStatBucket, SqlRun
from storage.db import utcnow
from storage.writer import BatchWriter

LAYERS = ["a", "b", "c"]
EVERY = 2
W = rollup.CHECKS_PER_BUCKET * EVERY  # steps per bucket
SPECIAL = [math.nan, math.inf, -math.inf, None]


def _rows(steps, seed=0, layers=LAYERS):
    """Layer rows with NaN, ±Inf and None sprinkled in (one layer's stable_rank never measured)."""
    rng = random.Random(seed)
    out = []
    for step in steps:
        for i, layer in enumerate(layers):
            row = {"layer": layer, "step": step, "wall_time": float(step), "sa_hist": [1, 2]}
            for st in rollup.STATS:
                value = rng.uniform(-5, 5)
                if rng.random() < 0.03:
                    value = rng.choice(SPECIAL)
                row[st] = None if (st == "stable_rank" and i == 2) else value
            out.append(row)
    return out


def _new_run(s, uid="r", every=EVERY):
    """A run as revision 0001 stores it (the ORM's runs table has columns added since)."""
    run_id = s.scalar(
        SqlRun.__table__.insert()
        .values(
            uid=uid,
            project_id=runs.project_id(s, "p"),
            name=uid,
            status="running",
            started_at=utcnow(),
            every=every,
        )
        .returning(SqlRun.__table__.c.id)
    )
    ids = runs.ensure_layers(s, run_id, [{"name": n, "position": i} for i, n in enumerate(LAYERS)])
    return run_id, ids


def _expected(rows, ids, width):
    """The oracle: each bucket's extremes computed by hand from the raw values."""
    groups: dict = {}
    for row in rows:
        groups.setdefault((ids[row["layer"]], row["step"] // width), []).append(row)
    out = {}
    for key, members in groups.items():
        want = {"n": len(members), "step_min": min(r["step"] for r in members)}
        want["step_max"] = max(r["step"] for r in members)
        for st in rollup.STATS:
            values = [r[st] for r in members if r[st] is not None]
            numbers = [v for v in values if not math.isnan(v)]
            has_nan = len(numbers) < len(values)
            want[f"{st}_max"] = math.nan if has_nan else (max(numbers) if numbers else None)
            want[f"{st}_min"] = min(numbers) if numbers else (math.nan if has_nan else None)
        out[key] = want
    return out


def _sealed(want: dict) -> dict:
    """The rollup leaves the run's newest bucket open (read raw) until the run moves past it."""
    newest = max(bucket for _, bucket in want)
    return {key: value for key, value in want.items() if key[1] < newest}


def _stored(db, run_id):
    cols = [
        "n",
        "step_min",
        "step_max",
        *(f"{st}_{e}" for st in rollup.STATS for e in ("min", "max")),
    ]
    with db.session() as s:
        rows = s.scalars(select(SqlLayerStatBucket).where(SqlLayerStatBucket.run_id == run_id))
        return {(r.layer_id, r.bucket): {c: getattr(r, c) for c in cols} for r in rows}


def _same(a, b) -> bool:
    return (
        a is b
        or a == b
        or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
    )


def _assert_equal(got: dict, want: dict):
    assert got.keys() == want.keys()
    for key in want:
        for col, value in want[key].items():
            assert _same(got[key][col], value), (key, col, got[key][col], value)


def test_rollup_equals_raw_extremes_per_bucket(db):
    rows = _rows(range(0, 500, EVERY))
    with db.session() as s:
        run_id, ids = _new_run(s)
        # Several batches, cutting buckets in the middle, as the batched writer does.
        for lo in range(0, len(rows), 37):
            stats.write_layer_stats(s, run_id, ids, rows[lo : lo + 37])
    got = _stored(db, run_id)
    _assert_equal(got, _sealed(_expected(rows, ids, W)))
    flat = [v for bucket in got.values() for v in bucket.values()]
    assert any(isinstance(v, float) and math.isnan(v) for v in flat)
    assert math.inf in flat and -math.inf in flat


def test_rewrites_and_replays_change_nothing(db):
    rows = _rows(range(0, 300, EVERY))
    with db.session() as s:
        run_id, ids = _new_run(s)
        stats.write_layer_stats(s, run_id, ids, rows)
    before = _stored(db, run_id)
    changed = [dict(r, grad_norm=1e9, sa_imbalance=-1e9) for r in rows[100:250]]
    with db.session() as s:
        stats.write_layer_stats(s, run_id, ids, rows)  # a spool replay
        stats.write_layer_stats(s, run_id, ids, changed)  # a rewrite with other values
        stats.write_layer_stats(s, run_id, ids, rows[:10] + rows[:10])  # duplicates in a batch
    _assert_equal(_stored(db, run_id), before)
    # A batch mixing stored and new checks adds only the new ones, first copy of a key wins.
    more = _rows(range(300, 340, EVERY), seed=1)
    with db.session() as s:
        stats.write_layer_stats(s, run_id, ids, changed[:30] + more + more)
    _assert_equal(_stored(db, run_id), _sealed(_expected(rows + more, ids, W)))


def test_the_writer_keeps_the_rollup_in_buckets_of_the_stored_interval(db, tmp_path):
    """The writer reads a run's bucket width once, and a resume announced with another ``every``
    keeps the width the run was created with (its stored buckets stay valid)."""
    rows = _rows(range(0, 400, EVERY), seed=3)
    layers = [{"name": n, "position": i} for i, n in enumerate(LAYERS)]
    for every, part in ((EVERY, rows[: len(rows) // 2]), (5 * EVERY, rows[len(rows) // 2 :])):
        writer = BatchWriter(db, "resumed", spool_dir=tmp_path)
        start = {"uid": "resumed", "project": "p", "name": "resumed", "started_at": 0.0}
        writer.put("start", {"run": start | {"every": every}, "layers": layers})
        for lo in range(0, len(part), 40):  # one commit per put: several reuse the width
            writer.put("layer_stats", part[lo : lo + 40])
            assert writer.flush(30)
        writer.close()
    run = runs.find_run(db, "resumed")
    assert run.every == EVERY
    ids = {layer.name: layer.id for layer in runs.layers(db, run.id)}
    _assert_equal(_stored(db, run.id), _sealed(_expected(rows, ids, W)))


def test_a_late_check_reopens_and_recomputes_its_bucket(db):
    rows = _rows(range(0, 600, EVERY), seed=6)
    late = [r for r in rows if r["step"] in (100, 102)]
    with db.session() as s:
        run_id, ids = _new_run(s)
        stats.write_layer_stats(s, run_id, ids, [r for r in rows if r not in late])
        stats.write_layer_stats(s, run_id, ids, late)  # replayed from the spool after newer checks
    _assert_equal(_stored(db, run_id), _sealed(_expected(rows, ids, W)))


def test_grids_fall_back_to_raw_rows_where_the_rollup_has_none(db):
    rows = _rows(range(0, 1600, EVERY), seed=7)
    with db.session() as s:
        run_id, ids = _new_run(s)
        stats.write_layer_stats(s, run_id, ids, rows)
    with db.engine.begin() as conn:
        conn.execute(SqlLayerStatBucket.__table__.delete())
    grid = series.layer_matrix(db, run_id, "sigma1", max_steps=20)
    assert len(grid.steps) == 20
    _column_oracle(rows, grid, "sigma1", "max", None, None)


def _column_oracle(rows, grid, stat, kind, start, end):
    """Each column j holds the checks from steps[j] up to the next column's first step."""
    bounds = [*grid.steps, math.inf]
    for i, layer in enumerate(grid.layers):
        for j, cell in enumerate(grid.z[i]):
            values = [
                r[stat]
                for r in rows
                if r["layer"] == layer
                and bounds[j] <= r["step"] < bounds[j + 1]
                and (start is None or r["step"] >= start)
                and (end is None or r["step"] <= end)
                and r[stat] is not None
            ]
            want = None
            for v in values:
                want = (rollup.higher if kind == "max" else rollup.lower)(want, v)
            assert _same(cell, want), (layer, grid.steps[j], cell, want)


@pytest.mark.parametrize("start,end", [(None, None), (7, None), (None, 1501), (45, 1490)])
def test_wide_grids_read_the_rollup_and_match_the_raw_rows(db, start, end):
    rows = _rows(range(0, 1600, EVERY), seed=2)
    with db.session() as s:
        run_id, ids = _new_run(s)
        stats.write_layer_stats(s, run_id, ids, rows)
    max_steps = 20  # 1600 steps = 50 buckets of 32: the rollup serves this range
    grids = series.layer_matrices(
        db,
        run_id,
        ["sa_imbalance", "stable_rank"],
        start=start,
        end=end,
        max_steps=max_steps,
        agg={"stable_rank": "min"},
    )
    sa = grids["sa_imbalance"]
    assert sa.bucketed and len(sa.steps) == max_steps and sa.layers == LAYERS
    assert sa.steps[0] == (0 if start is None else start + start % EVERY)
    for st, kind in (("sa_imbalance", "max"), ("stable_rank", "min")):
        _column_oracle(rows, grids[st], st, kind, start, end)
    # Every column is whole buckets: its first step starts a bucket unless the range cut it.
    assert all(step % W == 0 for step in sa.steps[1:])
    # A statistic outside the rollup, or zooming in, reads raw rows with the old columns.
    raw = series.layer_matrices(
        db, run_id, ["sa_imbalance"], start=start, end=end, max_steps=20, use_rollup=False
    )
    assert len(raw["sa_imbalance"].steps) == max_steps
    narrow = series.layer_matrix(db, run_id, "sigma1", start=100, end=400, max_steps=max_steps)
    _column_oracle(rows, narrow, "sigma1", "max", 100, 400)


def test_grid_of_chosen_layers_uses_the_rollup_too(db):
    rows = _rows(range(0, 1600, EVERY), seed=3)
    with db.session() as s:
        run_id, ids = _new_run(s)
        stats.write_layer_stats(s, run_id, ids, rows)
    grid = series.layer_matrix(db, run_id, "grad_norm", max_steps=10, layers=["c", "a"])
    assert grid.layers == ["a", "c"] and len(grid.steps) == 10
    _column_oracle(rows, grid, "grad_norm", "max", None, None)


def test_migration_backfills_runs_recorded_before_it(db_url):
    db = Database(db_url)
    with db.engine.begin() as conn:
        migrate.upgrade(conn, "0001")
    rows = _rows(range(0, 700, EVERY), seed=4)
    with db.session() as s:
        run_id, ids = _new_run(s, uid="old")
        unknown, ids_unknown = _new_run(s, uid="no-every", every=None)
        for rid, lids in ((run_id, ids), (unknown, ids_unknown)):
            payload = [
                {
                    **{k: v for k, v in r.items() if k != "layer"},
                    "run_id": rid,
                    "layer_id": lids[r["layer"]],
                }
                for r in rows
            ]
            stats._bulk_insert_ignore(s, SqlLayerStat.__table__, payload)
    before, after = db.upgrade()
    assert (before, after) == ("0001", migrate.head_revision())
    # The backfill also closes each run's newest bucket; later writes reopen it.
    _assert_equal(_stored(db, run_id), _expected(rows, ids, W))
    _assert_equal(_stored(db, unknown), _expected(rows, ids_unknown, rollup.width(None)))
    # The writer keeps extending a backfilled run, merging into its last, partial bucket.
    more = _rows(range(700, 800, EVERY), seed=5)
    with db.session() as s:
        stats.write_layer_stats(s, run_id, ids, more)
    _assert_equal(_stored(db, run_id), _sealed(_expected(rows + more, ids, W)))
    db.dispose()


def test_negative_and_huge_steps(db):
    rows = _rows(range(-40, 1600, EVERY), seed=8)
    with db.session() as s:
        run_id, ids = _new_run(s)
        stats.write_layer_stats(s, run_id, ids, rows)
    # Negative steps stay out of the rollup; a grid reaching them reads raw rows.
    _assert_equal(_stored(db, run_id), _sealed(_expected(rows[60:], ids, W)))
    grid = series.layer_matrix(db, run_id, "grad_norm", max_steps=20)
    _column_oracle(rows, grid, "grad_norm", "max", None, None)
    # A jump to a huge step seals everything before it in one statement, not bucket by bucket.
    far = _rows([2_000_000_000], seed=9)  # near the 32-bit step column's limit
    with db.session() as s:
        stats.write_layer_stats(s, run_id, ids, far)
    _assert_equal(_stored(db, run_id), _expected(rows[60:], ids, W))
