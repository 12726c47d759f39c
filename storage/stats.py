"""Per-step scalars and per-check layer statistics: bulk writes and bounded reads."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from storage import rollup
from storage._models import SqlLayer, SqlLayerStat, SqlScalar
from storage.db import Database
from storage.entities import LAYER_STATISTICS, LayerStat, ScalarPoint
from storage.types import Counts


def _bulk_insert_ignore(session: Session, table, rows: list[dict]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING of many rows, the fast way for each backend.

    Core, not the ORM's bulk path (which costs more Python per row than the database does).
    SQLite: one ``executemany`` (sqlite3 loops in C). PostgreSQL: one statement per call that
    ``unnest``s one array per column, instead of psycopg's one statement per row.
    """
    if not rows:
        return
    keys = list(dict.fromkeys(k for row in rows for k in row))
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        _pg_unnest_insert(session, table, rows, keys)
    else:
        # executemany compiles one statement from the first row: give every row every key.
        rows = [{k: row.get(k) for k in keys} for row in rows]
        session.execute(sqlite.insert(table).on_conflict_do_nothing(), rows)


def _pg_unnest_insert(session: Session, table, rows: list[dict], keys: list[str]) -> None:
    dialect = session.get_bind().dialect
    quote = dialect.identifier_preparer
    columns, casts, arrays = [], [], []
    for key in keys:
        column = table.c[key]
        values = [row.get(key) for row in rows]
        if isinstance(column.type, Counts):
            values = [column.type.process_bind_param(v, dialect) for v in values]
        columns.append(quote.quote(key))
        casts.append(f"%s::{column.type.compile(dialect=dialect)}[]")
        arrays.append(values)
    sql = (
        f"INSERT INTO {quote.format_table(table)} ({', '.join(columns)}) "
        f"SELECT * FROM unnest({', '.join(casts)}) ON CONFLICT DO NOTHING"
    )
    session.connection().exec_driver_sql(sql, tuple(arrays))


def write_scalars(session: Session, run_id: int, rows: list[dict]) -> None:
    """Insert dicts with step, key, value, wall_time; a (run, key, step) already stored is kept."""
    _bulk_insert_ignore(session, SqlScalar.__table__, [{"run_id": run_id, **row} for row in rows])


def write_layer_stats(
    session: Session,
    run_id: int,
    layer_ids: dict[str, int],
    rows: list[dict],
    bucket_width: int | None = None,
) -> None:
    """Insert dicts with layer (name), step, wall_time, the statistics and sa_hist; idempotent.

    Then brings the heatmap rollup (:mod:`storage.rollup`) up to date in the same transaction
    (``bucket_width``: the run's :func:`storage.rollup.run_width`, if known).
    """
    payload = []
    for row in rows:
        row = dict(row)
        row["layer_id"] = layer_ids[row.pop("layer")]
        row["run_id"] = run_id
        payload.append(row)
    _bulk_insert_ignore(session, SqlLayerStat.__table__, payload)
    rollup.seal(session, run_id, [row["step"] for row in payload], bucket_width)


def scalar_series(
    db: Database,
    run_id: int,
    keys: list[str] | None = None,
    *,
    after_step: int | None = None,
    upto_step: int | None = None,
    limit: int | None = None,
) -> list[ScalarPoint]:
    """Scalars of a run ordered by (step, key); ``after_step`` is exclusive, ``upto_step`` inclusive."""
    query = select(SqlScalar).where(SqlScalar.run_id == run_id)
    if keys is not None:
        query = query.where(SqlScalar.key.in_(keys))
    if after_step is not None:
        query = query.where(SqlScalar.step > after_step)
    if upto_step is not None:
        query = query.where(SqlScalar.step <= upto_step)
    query = query.order_by(SqlScalar.step, SqlScalar.key)
    if limit is not None:
        query = query.limit(limit)
    with db.session() as s:
        return [ScalarPoint(r.step, r.key, r.value, r.wall_time) for r in s.scalars(query)]


def scalar_keys(db: Database, run_id: int) -> list[str]:
    with db.session() as s:
        return list(
            s.scalars(
                select(SqlScalar.key)
                .where(SqlScalar.run_id == run_id)
                .distinct()
                .order_by(SqlScalar.key)
            )
        )


def layer_stats(
    db: Database,
    run_id: int,
    *,
    layers: list[str] | None = None,
    after_step: int | None = None,
    upto_step: int | None = None,
    with_hist: bool = True,
    limit: int | None = None,
) -> list[LayerStat]:
    """Layer statistics ordered by (step, model order); ``after_step`` exclusive, ``upto_step`` inclusive."""
    columns = [getattr(SqlLayerStat, c) for c in LAYER_STATISTICS]
    if with_hist:
        columns.append(SqlLayerStat.sa_hist)
    query = (
        select(SqlLayerStat.step, SqlLayer.name, SqlLayerStat.wall_time, *columns)
        .join(SqlLayer, SqlLayer.id == SqlLayerStat.layer_id)
        .where(SqlLayerStat.run_id == run_id)
    )
    if layers is not None:
        query = query.where(SqlLayer.name.in_(layers))
    if after_step is not None:
        query = query.where(SqlLayerStat.step > after_step)
    if upto_step is not None:
        query = query.where(SqlLayerStat.step <= upto_step)
    query = query.order_by(SqlLayerStat.step, SqlLayer.position)
    if limit is not None:
        query = query.limit(limit)
    names = ["step", "layer", "wall_time", *LAYER_STATISTICS] + (["sa_hist"] if with_hist else [])
    with db.session() as s:
        return [LayerStat(**dict(zip(names, row, strict=True))) for row in s.execute(query).all()]


def last_steps(db: Database, run_id: int) -> tuple[int | None, int | None]:
    """(last step with scalars, last step with layer statistics)."""
    with db.session() as s:
        scalar = s.scalar(select(func.max(SqlScalar.step)).where(SqlScalar.run_id == run_id))
        layer = s.scalar(select(func.max(SqlLayerStat.step)).where(SqlLayerStat.run_id == run_id))
        return scalar, layer


def count_rows(db: Database, run_id: int) -> tuple[int, int]:
    """(scalar rows, layer-stat rows) stored for a run."""
    with db.session() as s:
        scalars = s.scalar(
            select(func.count()).select_from(SqlScalar).where(SqlScalar.run_id == run_id)
        )
        stats = s.scalar(
            select(func.count()).select_from(SqlLayerStat).where(SqlLayerStat.run_id == run_id)
        )
        return scalars or 0, stats or 0
