"""The layer-statistic rollup: per (run, layer, step bucket) extremes of the heatmap statistics.

A wide layer × step heatmap (the whole of a long run) reads these rows instead of every check:
16 checks become one row, so SQLite sorts 16× fewer rows. A bucket is ``CHECKS_PER_BUCKET``
checks wide, ``step // width(run.every)``; each row keeps its first and last step, the number
of checks and the minimum and maximum of each statistic in :data:`STATS`.

A bucket's row is computed from its raw rows in SQL once the run has moved past it (see
:func:`seal`), so it always equals them: a spool replay or a rewritten check changes nothing,
and the writer pays one statement per 16 checks, not one per check. The newest, still open
bucket has no row; readers take it from the raw rows. NaN follows the raw reads: it wins a
maximum and loses a minimum to any number; NULL (not measured) is ignored.

Written by :func:`storage.stats.write_layer_stats`; read by :func:`storage.series.layer_matrices`.
"""

from __future__ import annotations

import math

from sqlalchemy import Integer, func, literal_column, select
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


def _sealed(session: Session, run_id: int) -> int:
    """The run's newest bucket in the rollup (-1: none). Every bucket up to it is complete."""
    bucket = SqlLayerStatBucket.__table__.c  # the table, not the class: no ORM work per commit
    found = session.scalar(select(func.max(bucket.bucket)).where(bucket.run_id == run_id))
    return -1 if found is None else int(found)


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Inclusive bucket spans, overlapping or adjacent ones joined."""
    out: list[list[int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def seal(session: Session, run_id: int, steps: list[int], bucket_width: int | None = None) -> None:
    """Bring the rollup up to date after layer-stat rows at ``steps`` were inserted.

    A bucket is written once the run has moved past it, recomputed from its raw rows in one
    ``INSERT ... SELECT ... GROUP BY`` (so it always equals them, however often a check is
    rewritten or replayed). Buckets at or below the newest rollup row that this batch touched
    (a late or replayed check) are recomputed too. The newest bucket stays open and is read raw.
    Cost: one index lookup per batch, plus one statement per 16 checks. ``bucket_width``: the
    run's :func:`run_width`, when the caller already knows it (one query fewer).
    """
    w = bucket_width or run_width(session, run_id)
    # Negative steps stay out of the rollup (SQL's integer division truncates, Python's floors).
    touched = {int(step) // w for step in steps if step >= 0}
    if not touched:
        return
    newest = max(touched)
    sealed = _sealed(session, run_id)
    spans = [(b, b) for b in touched if b < newest or b <= sealed]
    if sealed + 1 < newest:
        spans.append((sealed + 1, newest - 1))  # completed since the last batch (or ever)
    for first, last in _merged(spans):
        _recompute(session, run_id, w, first * w, (last + 1) * w - 1)


def _recompute(session: Session, run_id: int, w: int, first_step: int, last_step: int) -> None:
    r, table = SqlLayerStat, SqlLayerStatBucket.__table__
    # The width as a literal: PostgreSQL must see the same expression in SELECT and GROUP BY.
    bucket = r.step // literal_column(str(int(w)), Integer)
    columns = ["run_id", "bucket", "layer_id", "step_min", "step_max", "n"]
    values = [r.run_id, bucket, r.layer_id, func.min(r.step), func.max(r.step), func.count()]
    for st in STATS:
        columns += [f"{st}_min", f"{st}_max"]
        values += [func.min(getattr(r, st)), func.max(getattr(r, st))]
    source = (
        select(*values)
        .where(r.run_id == run_id, r.step >= first_step, r.step <= last_step)
        .group_by(r.run_id, bucket, r.layer_id)
    )
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = insert(table).from_select(columns, source)
    stmt = stmt.on_conflict_do_update(
        index_elements=["run_id", "bucket", "layer_id"],
        set_={c: stmt.excluded[c] for c in columns[3:]},
    )
    session.execute(stmt)


# -- reads ---------------------------------------------------------------------------------------


def grid_rows(
    session: Session,
    run_id: int,
    stats: list[str],
    kinds: list[str],
    *,
    lo: int,
    hi: int,
    columns: int,
    layer_ids: list[int] | None,
    steps_per_bucket: int,
) -> list[tuple]:
    """``(layer_id, column, first step, *values)`` of a layer × step grid, from the rollup.

    ``lo``..``hi`` are the first and last stored steps in the requested range; its buckets are
    cut into ``columns`` columns of whole buckets. ``kinds[i]`` is ``"max"`` or ``"min"`` for
    ``stats[i]``. Steps the rollup cannot answer (a bucket cut by the range's start or end, the
    open newest bucket, a run not rolled up yet) are read from raw rows.
    """
    w = steps_per_bucket
    b_lo, b_hi = lo // w, hi // w
    n_buckets = b_hi - b_lo + 1

    def column_of(bucket):
        return (bucket - b_lo) * columns // n_buckets

    first_full = b_lo if lo == b_lo * w else b_lo + 1  # lo is the first stored step in range
    last_full = min(b_hi if hi == (b_hi + 1) * w - 1 else b_hi - 1, _sealed(session, run_id))
    if first_full > last_full:
        raw_spans = [(lo, hi)]
    else:
        raw_spans = [(lo, first_full * w - 1), ((last_full + 1) * w, hi)]
    raw_spans = [(a, b) for a, b in raw_spans if a <= b]
    # Columns fed by raw rows may also get rollup rows: merge those; the rest pass straight on.
    edge_columns = {column_of(step // w) for a, b in raw_spans for step in range(a, b + 1, w)}
    edge_columns |= {column_of(b // w) for _, b in raw_spans}
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

    def read(query):
        for row in session.connection().execute(query).all():  # Core: no ORM row processing
            if row[1] in edge_columns:
                merge(row[0], row[1], row[2], row[3:])
            else:
                out.append(row)

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
        read(
            select(t.layer_id, column, func.min(t.step_min), *aggs)
            .where(*where)
            .group_by(t.layer_id, column)
        )
    r = SqlLayerStat
    column = column_of(r.step // literal_column(str(int(w)), Integer)).label("column")
    aggs = [
        (func.max if kind == "max" else func.min)(getattr(r, st))
        for st, kind in zip(stats, kinds, strict=True)
    ]
    for first, last in raw_spans:
        where = [r.run_id == run_id, r.step >= first, r.step <= last]
        if layer_ids is not None:
            where.append(r.layer_id.in_(layer_ids))
        read(
            select(r.layer_id, column, func.min(r.step), *aggs)
            .where(*where)
            .group_by(r.layer_id, column)
        )
    return out + [(layer_id, col, *cell) for (layer_id, col), cell in cells.items()]


__all__ = ["CHECKS_PER_BUCKET", "STATS", "grid_rows", "higher", "lower", "seal", "width"]
