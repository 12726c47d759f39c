"""The layer-statistic rollup: per (run, layer, step bucket) extremes of the heatmap statistics.

A wide layer × step heatmap (the whole of a long run) reads these rows instead of every check:
16 checks become one row, so SQLite sorts 16× fewer rows. A bucket is ``CHECKS_PER_BUCKET``
checks wide, ``step // width(run.every)``; each row keeps its first and last step, the number
of checks and the minimum and maximum of each statistic in :data:`STATS`.

Only extremes (and the count of checks actually inserted) are kept, so rewriting rows that are
already stored (a spool replay) changes nothing. NaN follows the raw reads: it wins a maximum
and loses a minimum to any number; NULL (not measured) is ignored.

Written by :func:`storage.stats.write_layer_stats`; read by :func:`storage.series.layer_matrices`.
"""

from __future__ import annotations

import math

from sqlalchemy import and_, case, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from storage._models import SqlLayerStat, SqlLayerStatBucket, SqlRun

STATS = ("grad_norm", "weight_norm", "sigma1", "stable_rank", "sa_imbalance")
"""Statistics the rollup keeps: the run page's layer × step heatmaps."""

CHECKS_PER_BUCKET = 16
"""Checks per rollup row. The migration 0002 backfill froze this value: change both together."""

DEFAULT_EVERY = 10
"""Check interval assumed for runs that did not record one."""


def width(every: int | None) -> int:
    """Steps per bucket of a run that checks every ``every`` steps.

    >>> width(10), width(None)
    (160, 160)
    """
    return CHECKS_PER_BUCKET * (every if every and every >= 1 else DEFAULT_EVERY)


def run_width(session: Session, run_id: int) -> int:
    return width(session.scalar(select(SqlRun.every).where(SqlRun.id == run_id)))


def higher(a: float | None, b: float | None) -> float | None:
    """The maximum as the database computes it: NULL ignored, NaN above everything."""
    if a is None or (b is not None and (math.isnan(b) or (not math.isnan(a) and b > a))):
        return b
    return a


def lower(a: float | None, b: float | None) -> float | None:
    """The minimum as the database computes it: NULL ignored, NaN below nothing but NaN."""
    if a is None or (b is not None and not math.isnan(b) and (math.isnan(a) or b < a)):
        return b
    return a


# -- writes --------------------------------------------------------------------------------------


def _not_yet_stored(session: Session, run_id: int, rows: list[dict]) -> list[dict]:
    """The rows an INSERT ... ON CONFLICT DO NOTHING will actually insert (first of each key).

    One indexed range read per batch (normally empty): a rewritten check, even with different
    values, must not reach the rollup, or it would disagree with the raw rows.
    """
    steps = [row["step"] for row in rows]
    stored = set(
        session.execute(
            select(SqlLayerStat.layer_id, SqlLayerStat.step).where(
                SqlLayerStat.run_id == run_id,
                SqlLayerStat.step >= min(steps),
                SqlLayerStat.step <= max(steps),
            )
        ).all()
    )
    fresh = []
    for row in rows:
        key = (row["layer_id"], row["step"])
        if key not in stored:
            stored.add(key)
            fresh.append(row)
    return fresh


def fold(rows: list[dict], steps_per_bucket: int) -> list[dict]:
    """Aggregate raw rows (``layer_id``, ``step``, statistics) into one row per (layer, bucket)."""
    out: dict[tuple[int, int], dict] = {}
    for row in rows:
        step = int(row["step"])
        key = (row["layer_id"], step // steps_per_bucket)
        acc = out.get(key)
        if acc is None:
            acc = out[key] = {
                "layer_id": key[0],
                "bucket": key[1],
                "step_min": step,
                "step_max": step,
                "n": 0,
                **{f"{st}_{end}": None for st in STATS for end in ("min", "max")},
            }
        acc["step_min"] = min(acc["step_min"], step)
        acc["step_max"] = max(acc["step_max"], step)
        acc["n"] += 1
        for st in STATS:
            value = row.get(st)
            if value is not None:
                value = float(value)
                acc[f"{st}_min"] = lower(acc[f"{st}_min"], value)
                acc[f"{st}_max"] = higher(acc[f"{st}_max"], value)
    return list(out.values())


def add(session: Session, run_id: int, rows: list[dict]) -> None:
    """Merge raw layer-stat rows (with ``layer_id``), before they are inserted, into the rollup.

    One upsert row per (layer, bucket) touched by the batch; call it before the raw insert.
    """
    if not rows:
        return
    fresh = _not_yet_stored(session, run_id, rows)
    if not fresh:
        return
    merged = [{"run_id": run_id, **row} for row in fold(fresh, run_width(session, run_id))]
    table = SqlLayerStatBucket.__table__
    dialect = session.get_bind().dialect.name
    stmt = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    old, new = table.c, stmt.excluded
    # Spelled out with CASE: SQLite's scalar max(a, b) is NULL when either is NULL. Comparisons
    # order NaN above every number on both backends (SQLite stores it as text, which sorts last).
    update = {
        "step_min": case((new.step_min < old.step_min, new.step_min), else_=old.step_min),
        "step_max": case((new.step_max > old.step_max, new.step_max), else_=old.step_max),
        "n": old.n + new.n,
    }
    for st in STATS:
        lo, hi = f"{st}_min", f"{st}_max"
        update[lo] = case(
            (new[lo].is_(None), old[lo]),
            (old[lo].is_(None) | (new[lo] < old[lo]), new[lo]),
            else_=old[lo],
        )
        update[hi] = case(
            (new[hi].is_(None), old[hi]),
            (old[hi].is_(None) | (new[hi] > old[hi]), new[hi]),
            else_=old[hi],
        )
    stmt = stmt.on_conflict_do_update(index_elements=["run_id", "layer_id", "bucket"], set_=update)
    session.execute(stmt, merged)


# -- reads ---------------------------------------------------------------------------------------


def grid_rows(
    session: Session,
    run_id: int,
    stats: list[str],
    kinds: list[str],
    *,
    lo: int,
    hi: int,
    start: int | None,
    end: int | None,
    columns: int,
    layer_ids: list[int] | None,
    steps_per_bucket: int,
) -> list[tuple]:
    """``(layer_id, column, first step, *values)`` of a layer × step grid, from the rollup.

    ``lo``..``hi`` are the first and last stored steps in ``[start, end]``; its buckets are cut
    into ``columns`` columns of whole buckets. ``kinds[i]`` is ``"max"`` or ``"min"`` for
    ``stats[i]``. A bucket only partly inside ``[start, end]`` is read from its raw rows.
    """
    w = steps_per_bucket
    b_lo, b_hi = lo // w, hi // w
    n_buckets = b_hi - b_lo + 1

    def column_of(bucket):
        return (bucket - b_lo) * columns // n_buckets

    partial = set()
    if start is not None and start > b_lo * w:
        partial.add(b_lo)
    if end is not None and end < (b_hi + 1) * w - 1:
        partial.add(b_hi)
    full = [b for b in (b_lo, b_hi) if b not in partial]
    first_full = b_lo if b_lo in full else b_lo + 1
    last_full = b_hi if b_hi in full else b_hi - 1

    # Columns holding a cut bucket merge rollup and raw cells; the rest pass straight through.
    edge_columns = {column_of(b) for b in partial}
    out: list[tuple] = []
    cells: dict[tuple[int, int], list] = {}

    def merge(layer_id, column, step, values):
        cell = cells.get((layer_id, column))
        if cell is None:
            cells[(layer_id, column)] = [step, *values]
            return
        cell[0] = min(cell[0], step)
        for i, (kind, value) in enumerate(zip(kinds, values, strict=True), start=1):
            cell[i] = (higher if kind == "max" else lower)(cell[i], value)

    if first_full <= last_full:
        t = SqlLayerStatBucket
        column = column_of(t.bucket).label("column")
        aggs = [
            func.max(getattr(t, f"{st}_max"))
            if kind == "max"
            else func.min(getattr(t, f"{st}_min"))
            for st, kind in zip(stats, kinds, strict=True)
        ]
        where = [t.run_id == run_id, t.bucket >= first_full, t.bucket <= last_full]
        if layer_ids is not None:
            where.append(t.layer_id.in_(layer_ids))
        query = (
            select(t.layer_id, column, func.min(t.step_min), *aggs)
            .where(*where)
            .group_by(t.layer_id, column)
        )
        for row in session.connection().execute(query):  # Core: no ORM row processing
            if row[1] in edge_columns:
                merge(row[0], row[1], row[2], row[3:])
            else:
                out.append(row)

    r = SqlLayerStat
    for bucket in sorted(partial):
        first = max(bucket * w, start if start is not None else bucket * w)
        last = min((bucket + 1) * w - 1, end if end is not None else (bucket + 1) * w - 1)
        aggs = [
            (func.max if kind == "max" else func.min)(getattr(r, st))
            for st, kind in zip(stats, kinds, strict=True)
        ]
        where = [r.run_id == run_id, and_(r.step >= first, r.step <= last)]
        if layer_ids is not None:
            where.append(r.layer_id.in_(layer_ids))
        query = select(r.layer_id, func.min(r.step), *aggs).where(*where).group_by(r.layer_id)
        for layer_id, step, *values in session.connection().execute(query):
            merge(layer_id, column_of(bucket), step, values)

    return out + [(layer_id, col, *cell) for (layer_id, col), cell in cells.items()]


__all__ = ["CHECKS_PER_BUCKET", "STATS", "add", "fold", "grid_rows", "higher", "lower", "width"]
