"""Bounded, downsampled reads for the dashboard: whatever the run's length, a fixed number of points.

Every query here returns at most a few thousand values however long the run is. Long series
are cut into step buckets *in SQL* and each bucket keeps its extremes (the rows holding the
minimum and the maximum), so a one-step spike or a NaN survives downsampling. Both backends
sort NaN above every number (see :class:`storage.types.FaithfulFloat`), so a bucket that holds
a NaN reports it as its maximum.

>>> from storage import Database
>>> from storage import series
>>> db = Database("sqlite:///tripwire.db")                     # doctest: +SKIP
>>> series.scalar_frame(db, run_id=1, keys=["loss"], max_points=1000)
      step   key     value
0        0  loss  10.98...
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import case, func, or_, select, text

from storage import rollup
from storage._models import SqlAlert, SqlLayer, SqlLayerStat, SqlProject, SqlRun, SqlScalar
from storage.db import Database
from storage.entities import LAYER_STATISTICS, STALLED_AFTER_S
from storage.runs import as_run

SORT_CACHE_KIB = 65_536
"""SQLite page cache (KiB) while a layer × step grid is aggregated; restored afterwards."""

AGGREGATES = ("max", "min")
"""How a layer × step cell summarises its bucket. No mean: SQLite would read a NaN as 0."""


@dataclass(frozen=True)
class LayerMatrix:
    """One statistic as a layer × step grid: ``z[i][j]`` is layer ``layers[i]`` at ``steps[j]``.

    ``steps[j]`` is the first step of bucket ``j``; a cell with no data is ``None``.
    """

    stat: str
    layers: list[str]
    steps: list[int]
    z: list[list[float | None]]
    bucketed: bool = False


@dataclass(frozen=True)
class HistSeries:
    """One layer's SA histogram over time: ``counts[j]`` is the histogram at ``steps[j]``."""

    layer: str
    steps: list[int]
    counts: list[list[int]]
    sa_pos: list[float | None]
    bin_edges: list[float] = field(default_factory=list)


@contextmanager
def _sqlite_cache(session, kib: int):
    """Temporarily raise SQLite's page cache on this session's connection (no-op elsewhere)."""
    if session.get_bind().dialect.name != "sqlite":
        yield
        return
    before = session.execute(text("PRAGMA cache_size")).scalar()
    session.execute(text(f"PRAGMA cache_size = -{int(kib)}"))
    try:
        yield
    finally:
        session.execute(text(f"PRAGMA cache_size = {int(before)}"))


def _step_range(query_min_max) -> tuple[int | None, int | None]:
    lo, hi = query_min_max
    return (None, None) if lo is None else (int(lo), int(hi))


def _where_steps(column, start: int | None, end: int | None) -> list:
    conds = []
    if start is not None:
        conds.append(column >= start)
    if end is not None:
        conds.append(column <= end)
    return conds


# -- per-step scalars ----------------------------------------------------------------------------


def scalar_frame(
    db: Database,
    run_id: int,
    keys: list[str] | tuple[str, ...] = ("loss", "lr", "grad_norm"),
    *,
    start: int | None = None,
    end: int | None = None,
    max_points: int = 2000,
):
    """A run's scalars as a DataFrame (``step``, ``key``, ``value``), at most ~``max_points`` per key.

    A key with more rows than ``max_points`` in ``[start, end]`` is cut into ``max_points // 2``
    step buckets and each bucket keeps the rows of its minimum and its maximum (their true
    steps), so spikes, NaN and ±Inf stay visible. Shorter series come back whole.

    >>> df = scalar_frame(db, run.id, ["loss"], start=0, end=5000)   # doctest: +SKIP
    """
    import pandas as pd

    base = [SqlScalar.run_id == run_id, SqlScalar.key.in_(list(keys)), SqlScalar.value.is_not(None)]
    base += _where_steps(SqlScalar.step, start, end)
    frames = []
    with db.session() as s:
        counts = s.execute(
            select(SqlScalar.key, func.count(), func.min(SqlScalar.step), func.max(SqlScalar.step))
            .where(*base)
            .group_by(SqlScalar.key)
        ).all()
        for key, count, lo, hi in counts:
            where = [*base, SqlScalar.key == key]
            if count <= max_points:
                rows = s.execute(
                    select(SqlScalar.step, SqlScalar.value).where(*where).order_by(SqlScalar.step)
                ).all()
            else:
                rows = _extremes_per_bucket(s, where, int(lo), int(hi), max(1, max_points // 2))
            frames.append(pd.DataFrame(rows, columns=["step", "value"]).assign(key=key))
    if not frames:
        return pd.DataFrame({"step": [], "key": [], "value": []}).astype(
            {"step": "int64", "key": "object", "value": "float64"}
        )
    df = pd.concat(frames, ignore_index=True)[["step", "key", "value"]]
    return df.astype({"step": "int64", "value": "float64"})


def _extremes_per_bucket(session, where: list, lo: int, hi: int, buckets: int) -> list:
    span = hi - lo + 1
    bucket = ((SqlScalar.step - lo) * buckets // span).label("bucket")
    inner = select(SqlScalar.step, SqlScalar.value, bucket).where(*where).subquery()
    low = func.row_number().over(partition_by=inner.c.bucket, order_by=inner.c.value.asc())
    high = func.row_number().over(partition_by=inner.c.bucket, order_by=inner.c.value.desc())
    ranked = select(inner.c.step, inner.c.value, low.label("r_lo"), high.label("r_hi")).subquery()
    query = (
        select(ranked.c.step, ranked.c.value)
        .where(or_(ranked.c.r_lo == 1, ranked.c.r_hi == 1))
        .order_by(ranked.c.step)
    )
    return session.execute(query).all()


# -- per-layer statistics ------------------------------------------------------------------------


def layer_matrices(
    db: Database,
    run_id: int,
    stats: list[str] | tuple[str, ...] = ("sa_imbalance",),
    *,
    start: int | None = None,
    end: int | None = None,
    max_steps: int = 400,
    agg: dict[str, str] | None = None,
    layers: list[str] | None = None,
    use_rollup: bool = True,
) -> dict[str, LayerMatrix]:
    """Layer × step grids of several statistics from one scan of the run's rows.

    Layers come in model order (only ``layers`` when given). Steps beyond ``max_steps`` distinct buckets are grouped; each
    cell is the bucket's maximum (or minimum, per ``agg``), so a collapse or a NaN in any
    check of the bucket shows.

    A range wide enough that every column spans at least one bucket of :mod:`storage.rollup`
    (16 checks) is read from the rollup (``use_rollup=False`` forces the raw rows): its columns
    are then whole buckets, and what the rollup cannot answer (a bucket cut by ``start`` or
    ``end``, the run's open newest bucket) is read raw.

    >>> grids = layer_matrices(db, run.id, ["sa_imbalance", "grad_norm"])   # doctest: +SKIP
    >>> grids["sa_imbalance"].z[0][:3]
    [0.02, 0.05, 0.91]
    """
    agg = agg or {}
    for stat in stats:
        if stat not in LAYER_STATISTICS:
            raise ValueError(
                f"unknown layer statistic {stat!r}; one of {', '.join(LAYER_STATISTICS)}"
            )
        if agg.get(stat, "max") not in AGGREGATES:
            raise ValueError(f"agg for {stat} must be one of {', '.join(AGGREGATES)}")
    where = [SqlLayerStat.run_id == run_id, *_where_steps(SqlLayerStat.step, start, end)]
    with db.session() as s:
        layer_query = select(SqlLayer.id, SqlLayer.name).where(SqlLayer.run_id == run_id)
        if layers is not None:
            layer_query = layer_query.where(SqlLayer.name.in_(list(layers)))
        layer_rows = s.execute(layer_query.order_by(SqlLayer.position)).all()
        if layers is not None:
            where.append(SqlLayerStat.layer_id.in_([layer_id for layer_id, _ in layer_rows]))
        # Two statements: SQLite answers a lone MIN or MAX from the index's ends, but scans
        # the run's whole index range for both in one (0.17 s at 2 M rows).
        lo, hi = _step_range(
            (
                s.scalar(select(func.min(SqlLayerStat.step)).where(*where)),
                s.scalar(select(func.max(SqlLayerStat.step)).where(*where)),
            )
        )
        if lo is None or not layer_rows:
            names = [name for _, name in layer_rows]
            return {st: LayerMatrix(st, names, [], [[] for _ in names]) for st in stats}
        span = hi - lo + 1
        bucketed = span > max_steps
        kinds = [agg.get(st, "max") for st in stats]
        width = rollup.run_width(s, run_id) if bucketed and use_rollup else 0
        if width and lo >= 0 and span >= max_steps * width and set(stats) <= set(rollup.STATS):
            rows = rollup.grid_rows(
                s,
                run_id,
                list(stats),
                kinds,
                lo=lo,
                hi=hi,
                columns=max_steps,
                layer_ids=None if layers is None else [i for i, _ in layer_rows],
                steps_per_bucket=width,
            )
            return _assemble(stats, layer_rows, rows, bucketed)
        if layers is None:
            # Walk the run in step order (index run_id, step), which is the order rows were
            # written in, not layer by layer through the primary key: SQLite then reads the table
            # sequentially, 3x less CPU at 2 M rows. A few chosen layers keep the primary key.
            where += [SqlLayerStat.step >= lo, SqlLayerStat.step <= hi]
        bucket = (SqlLayerStat.step - lo) * max_steps // span if bucketed else SqlLayerStat.step
        bucket = bucket.label("bucket")
        aggs = [
            (func.min if agg.get(st, "max") == "min" else func.max)(getattr(SqlLayerStat, st))
            for st in stats
        ]
        # One scan for every statistic. On SQLite the GROUP BY sorts all the run's rows
        # (200 layers x 10 000 checks: 4.7 s of CPU with the default 2 MB page cache, 3.3 s
        # with 64 MB, which keeps the sort in memory); PostgreSQL hash-aggregates.
        query = (
            select(SqlLayerStat.layer_id, bucket, func.min(SqlLayerStat.step), *aggs)
            .where(*where)
            .group_by(SqlLayerStat.layer_id, bucket)
        )
        with _sqlite_cache(s, SORT_CACHE_KIB):
            rows = s.connection().execute(query).all()  # Core: no ORM row processing
    return _assemble(stats, layer_rows, rows, bucketed)


def _assemble(stats, layer_rows: list, rows: list, bucketed: bool) -> dict[str, LayerMatrix]:
    """Grids from ``(layer_id, bucket, first step, *values)`` rows, one per layer and bucket."""
    first_step: dict[int, int] = {}
    for _, b, step, *_ in rows:
        first_step[b] = min(step, first_step.get(b, step))
    buckets = sorted(first_step)
    column = {b: j for j, b in enumerate(buckets)}
    row_of = {layer_id: i for i, (layer_id, _) in enumerate(layer_rows)}
    grids = {st: [[None] * len(buckets) for _ in layer_rows] for st in stats}
    targets = [grids[st] for st in stats]
    for layer_id, b, _, *values in rows:  # up to layers x max_steps rows: keep this loop lean
        i = row_of.get(layer_id)
        if i is None:
            continue
        j = column[b]
        for grid, value in zip(targets, values, strict=True):
            grid[i][j] = None if value is None else float(value)
    names = [name for _, name in layer_rows]
    steps = [first_step[b] for b in buckets]
    return {st: LayerMatrix(st, names, steps, grids[st], bucketed) for st in stats}


def layer_matrix(db: Database, run_id: int, stat: str = "sa_imbalance", **kwargs) -> LayerMatrix:
    """One statistic as a layer × step grid; see :func:`layer_matrices`.

    >>> layer_matrix(db, run.id, "sigma1", max_steps=200).layers[:2]   # doctest: +SKIP
    ['blocks.0.attn.qkv', 'blocks.0.attn.proj']
    """
    return layer_matrices(db, run_id, [stat], **kwargs)[stat]


def layer_lines(
    db: Database,
    run_id: int,
    layers: list[str],
    stat: str,
    *,
    start: int | None = None,
    end: int | None = None,
    max_points: int = 1000,
):
    """One statistic for a few chosen layers as a DataFrame (``step``, ``layer``, ``value``).

    Bucketed like :func:`layer_matrices` (per-bucket maximum) when longer than ``max_points``.
    """
    import pandas as pd

    if not layers:
        return pd.DataFrame({"step": [], "layer": [], "value": []}).astype(
            {"step": "int64", "layer": "object", "value": "float64"}
        )
    grid = layer_matrix(
        db, run_id, stat, start=start, end=end, max_steps=max_points, layers=list(layers)
    )
    records = [
        (step, name, value)
        for name, row in zip(grid.layers, grid.z, strict=True)
        for step, value in zip(grid.steps, row, strict=True)
        if value is not None
    ]
    df = pd.DataFrame(records, columns=["step", "layer", "value"])
    return df.astype({"step": "int64", "value": "float64"})


def sa_hist_series(
    db: Database,
    run_id: int,
    layer: str,
    *,
    start: int | None = None,
    end: int | None = None,
    max_steps: int = 300,
) -> HistSeries:
    """One layer's SA histograms over time, at most ``max_steps`` of them.

    When there are more checks, each step bucket keeps its most collapsed histogram (the check
    with the largest imbalance, NaN first), so the moment a distribution folds to one sign is
    never sampled away.

    >>> h = sa_hist_series(db, run.id, "blocks.0.attn.qkv")   # doctest: +SKIP
    >>> len(h.counts[0]) == len(h.bin_edges) - 1
    True
    """
    with db.session() as s:
        edges = s.scalar(select(SqlRun.sa_bin_edges).where(SqlRun.id == run_id)) or []
        layer_id = s.scalar(
            select(SqlLayer.id).where(SqlLayer.run_id == run_id, SqlLayer.name == layer)
        )
        # (run_id, layer_id, step) is the primary key: these read one layer's rows only.
        where = [
            SqlLayerStat.run_id == run_id,
            SqlLayerStat.layer_id == layer_id,
            *_where_steps(SqlLayerStat.step, start, end),
        ]
        count, lo, hi = s.execute(
            select(func.count(), func.min(SqlLayerStat.step), func.max(SqlLayerStat.step)).where(
                *where
            )
        ).one()
        if layer_id is None or not count:
            return HistSeries(layer, [], [], [], list(edges))
        if count > max_steps:
            span = int(hi) - int(lo) + 1
            bucket = ((SqlLayerStat.step - int(lo)) * max_steps // span).label("bucket")
            inner = (
                select(SqlLayerStat.step, SqlLayerStat.sa_imbalance, bucket)
                .where(*where)
                .subquery()
            )
            # NULL (not measured) must lose to every value, NaN included, on both backends.
            missing_last = case((inner.c.sa_imbalance.is_(None), 1), else_=0)
            rank = func.row_number().over(
                partition_by=inner.c.bucket,
                order_by=(missing_last, inner.c.sa_imbalance.desc(), inner.c.step),
            )
            ranked = select(inner.c.step, rank.label("r")).subquery()
            chosen = select(ranked.c.step).where(ranked.c.r == 1)
            where = [*where, SqlLayerStat.step.in_(chosen)]
        rows = s.execute(
            select(SqlLayerStat.step, SqlLayerStat.sa_hist, SqlLayerStat.sa_pos)
            .where(*where)
            .order_by(SqlLayerStat.step)
        ).all()
    steps, counts, pos = [], [], []
    for step, hist, sa_pos in rows:
        steps.append(int(step))
        counts.append(list(hist) if hist is not None else [])
        pos.append(sa_pos)
    return HistSeries(layer, steps, counts, pos, list(edges))


# -- runs overview -------------------------------------------------------------------------------


def runs_overview(
    db: Database,
    *,
    project: str | None = None,
    status: str | None = None,
    name_contains: str | None = None,
    now: datetime | None = None,
    stalled_after_s: float = STALLED_AFTER_S,
    limit: int = 500,
) -> list[dict]:
    """One dict per run, newest first: what the runs page shows.

    Keys: ``id``, ``uid``, ``project``, ``name``, ``host``, ``status`` (``running``, ``stalled``,
    ``finished`` or ``failed``), ``last_step``, ``last_loss``, ``critical``, ``warning``,
    ``info`` (firing alerts by severity), ``pending``, ``started_at``, ``ended_at``,
    ``duration_s``. ``status="stalled"`` filters on the derived status.

    >>> [r["status"] for r in runs_overview(db)]    # doctest: +SKIP
    ['running', 'stalled', 'finished']
    """
    now = now or db.now()
    last_loss = (
        select(SqlScalar.value)
        .where(SqlScalar.run_id == SqlRun.id, SqlScalar.key == "loss")
        .order_by(SqlScalar.step.desc())
        .limit(1)
        .scalar_subquery()
    )
    last_scalar_step = (
        select(func.max(SqlScalar.step)).where(SqlScalar.run_id == SqlRun.id).scalar_subquery()
    )
    query = (
        select(SqlRun, SqlProject.name, last_loss.label("last_loss"), last_scalar_step)
        .join(SqlProject, SqlRun.project_id == SqlProject.id)
        .order_by(SqlRun.started_at.desc(), SqlRun.id.desc())
        .limit(limit)
    )
    if project:
        query = query.where(SqlProject.name == project)
    if status in ("running", "stalled"):
        query = query.where(SqlRun.status == "running")
    elif status:
        query = query.where(SqlRun.status == status)
    if name_contains:
        query = query.where(SqlRun.name.icontains(name_contains, autoescape=True))
    out = []
    with db.session() as s:
        rows = s.execute(query).all()
        ids = [row[0].id for row in rows]
        open_alerts: dict[int, dict[str, int]] = {}
        if ids:
            counted = s.execute(
                select(SqlAlert.run_id, SqlAlert.state, SqlAlert.severity, func.count())
                .where(SqlAlert.run_id.in_(ids), SqlAlert.state.in_(("pending", "firing")))
                .group_by(SqlAlert.run_id, SqlAlert.state, SqlAlert.severity)
            ).all()
            for run_id, state, severity, n in counted:
                slot = open_alerts.setdefault(run_id, {})
                key = severity if state == "firing" else "pending"
                slot[key] = slot.get(key, 0) + n
        for run, project_name, loss, scalar_step in rows:
            stalled = as_run(run, project_name).is_stalled(now, stalled_after_s)
            derived = "stalled" if stalled else run.status
            if status in ("running", "stalled") and derived != status:
                continue
            steps = [x for x in (run.last_step, scalar_step) if x is not None]
            ended = run.ended_at or (now if derived == "running" else run.heartbeat_at or now)
            alerts = open_alerts.get(run.id, {})
            out.append(
                {
                    "id": run.id,
                    "uid": run.uid,
                    "project": project_name,
                    "name": run.name,
                    "host": run.host,
                    "status": derived,
                    "last_step": max(steps) if steps else None,
                    "last_loss": None if loss is None else float(loss),
                    "critical": alerts.get("critical", 0),
                    "warning": alerts.get("warning", 0),
                    "info": alerts.get("info", 0),
                    "pending": alerts.get("pending", 0),
                    "started_at": run.started_at,
                    "ended_at": run.ended_at,
                    "duration_s": max(0.0, (ended - run.started_at).total_seconds()),
                }
            )
    return out


def is_finite(value: float | None) -> bool:
    """True for a real, finite number (False for None, NaN and ±Inf)."""
    return value is not None and math.isfinite(value)


__all__ = [
    "HistSeries",
    "LayerMatrix",
    "is_finite",
    "layer_lines",
    "layer_matrices",
    "layer_matrix",
    "runs_overview",
    "sa_hist_series",
    "scalar_frame",
]
