"""Projects, runs and their layers."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import case, delete, func, select, update
from sqlalchemy.orm import Session

from storage._models import (
    SqlEvalCursor,
    SqlLayer,
    SqlLayerStat,
    SqlLayerStatBucket,
    SqlProject,
    SqlRun,
    SqlScalar,
)
from storage.db import Database, utcnow
from storage.entities import Layer, Run
from storage.errors import AmbiguousRun, RunNotFound
from storage.upsert import insert_ignore


def as_run(row: SqlRun, project: str) -> Run:
    """The plain :class:`Run` of an ORM row (rows never leave a session; this does)."""
    return Run(
        id=row.id,
        uid=row.uid,
        project=project,
        name=row.name,
        status=row.status,
        started_at=row.started_at,
        config=row.config or {},
        tags=row.tags or [],
        host=row.host,
        pid=row.pid,
        every=row.every,
        sa_bin_edges=row.sa_bin_edges,
        ended_at=row.ended_at,
        heartbeat_at=row.heartbeat_at,
        last_step=row.last_step,
        error=row.error,
        logged_at=row.logged_at,
    )


def _to_layer(row: SqlLayer) -> Layer:
    return Layer(
        id=row.id,
        run_id=row.run_id,
        name=row.name,
        position=row.position,
        kind=row.kind,
        shape=row.shape,
    )


def _runs_query():
    return select(SqlRun, SqlProject.name).join(SqlProject, SqlRun.project_id == SqlProject.id)


def project_id(session: Session, name: str) -> int:
    """The id of project ``name``, created on first use.

    Two writers may create the same project at once (the ranks of one job, runs started
    together): the insert ignores a name another transaction holds, waiting for it to commit,
    and the id is read back either way.
    """
    by_name = select(SqlProject.id).where(SqlProject.name == name)
    found = session.scalar(by_name)
    if found is not None:
        return found
    insert_ignore(session, SqlProject, [{"name": name, "created_at": utcnow()}])
    return session.scalar(by_name)


def ensure_run(
    session: Session,
    *,
    uid: str,
    project: str,
    name: str,
    started_at: datetime,
    config: dict | None = None,
    tags: list | None = None,
    host: str | None = None,
    pid: int | None = None,
    every: int | None = None,
    sa_bin_edges: list[float] | None = None,
) -> int:
    """Create the run with this ``uid`` unless it exists (a resume); returns its id.

    On resume the run becomes ``running`` again and its ended time is cleared.
    """
    existing = session.scalar(select(SqlRun).where(SqlRun.uid == uid))
    if existing is not None:
        existing.status = "running"
        existing.ended_at = None
        existing.heartbeat_at = started_at  # the resumed attempt's start
        existing.logged_at = None  # until the resumed trainer logs (loading a checkpoint is slow)
        if sa_bin_edges is not None and existing.sa_bin_edges is None:
            existing.sa_bin_edges = sa_bin_edges
        return existing.id
    run = SqlRun(
        uid=uid,
        project_id=project_id(session, project),
        name=name,
        status="running",
        config=config or {},
        tags=tags or [],
        host=host,
        pid=pid,
        every=every,
        sa_bin_edges=sa_bin_edges,
        started_at=started_at,
        heartbeat_at=started_at,
    )
    session.add(run)
    session.flush()
    return run.id


def ensure_layers(session: Session, run_id: int, layers: list[dict]) -> dict[str, int]:
    """Register layers (dicts with name, position, kind, shape) once; returns name → id for the run."""
    known = dict(
        session.execute(select(SqlLayer.name, SqlLayer.id).where(SqlLayer.run_id == run_id)).all()
    )
    for spec in layers:
        if spec["name"] not in known:
            row = SqlLayer(run_id=run_id, **spec)
            session.add(row)
            session.flush()
            known[row.name] = row.id
    return known


def touch(
    session: Session,
    run_id: int,
    *,
    last_step: int | None,
    at: datetime,
    logged_at: datetime | None = None,
) -> None:
    """Record that the run is alive (heartbeat), how far it got and when it last logged a step
    (``logged_at``, the newest of the steps just written, kept if older); one UPDATE.

    On the table, not the ORM class: the writer runs this in every commit, and the ORM's bulk
    update path (synchronising loaded objects) costs more than the UPDATE itself.
    """
    run = SqlRun.__table__.c
    values: dict = {"heartbeat_at": at}
    if last_step is not None:
        values["last_step"] = _at_least(run.last_step, last_step)
    if logged_at is not None:
        values["logged_at"] = _at_least(run.logged_at, logged_at)
    session.execute(update(SqlRun.__table__).where(run.id == run_id).values(**values))


def _storable(text: str | None, limit: int) -> str | None:
    r"""Free text as a column can hold it: at most ``limit`` characters, a NUL character (which
    PostgreSQL refuses, in an exception's message for one) written as ``\x00``.

    >>> _storable("bad\x00byte", 2000)
    'bad\\x00byte'
    """
    return (text or None) and text.replace("\x00", "\\x00")[:limit]


def _at_least(column, value):
    """``column`` raised to ``value`` where that is more, or where it is NULL (SQL's GREATEST
    is MAX on SQLite and gives NULL there for a NULL argument)."""
    return case((column.is_(None) | (column < value), value), else_=column)


def rewind(session: Session, run_id: int, from_step: int) -> tuple[int, int | None]:
    """Forget what the run stored at ``from_step`` and after: a resumed attempt that went back
    to a checkpoint replaces the steps the earlier one wrote past it. Returns how many logged
    steps were removed and the last of them (``(0, None)``: nothing to replace).

    Removes the scalars, the layer statistics and their rollup buckets, lowers ``last_step``,
    and moves the alert engine's cursor back (its memory and open alerts are rebuilt from the
    steps before ``from_step``, see :mod:`alerts.service`); alerts and notifications stay as
    history.

    >>> with db.session() as s:                                     # doctest: +SKIP
    ...     rewind(s, run_id, 1000)
    (350, 1349)
    """
    scalars, stats = SqlScalar.__table__.c, SqlLayerStat.__table__.c
    buckets, cursor = SqlLayerStatBucket.__table__.c, SqlEvalCursor.__table__.c
    removed, last = session.execute(
        select(func.count(func.distinct(scalars.step)), func.max(scalars.step)).where(
            scalars.run_id == run_id, scalars.step >= from_step
        )
    ).one()
    session.execute(
        delete(SqlScalar.__table__).where(scalars.run_id == run_id, scalars.step >= from_step)
    )
    session.execute(
        delete(SqlLayerStat.__table__).where(stats.run_id == run_id, stats.step >= from_step)
    )
    # A bucket holding a removed check is open again: readers take it from the raw rows.
    session.execute(
        delete(SqlLayerStatBucket.__table__).where(
            buckets.run_id == run_id, buckets.step_max >= from_step
        )
    )
    kept = session.scalar(
        select(func.max(scalars.step)).where(scalars.run_id == run_id, scalars.step < from_step)
    )
    run = SqlRun.__table__.c
    session.execute(
        update(SqlRun.__table__)
        .where(run.id == run_id, run.last_step >= from_step)
        .values(last_step=kept)
    )
    # The cursor always changes, so that a scheduler that read the replaced steps before this
    # cannot store its result after it (commit_evaluation checks updated_at); one evaluated
    # past from_step rebuilds its memory from the steps kept.
    now, table = utcnow(), SqlEvalCursor.__table__
    session.execute(
        update(table)
        .where(cursor.run_id == run_id, cursor.last_step >= from_step)
        .values(last_step=from_step - 1, state={"rewound_to": from_step}, updated_at=now)  # alone
    )
    session.execute(
        update(table)
        .where(cursor.run_id == run_id, cursor.last_step < from_step)
        .values(updated_at=now)
    )
    # A scheduler evaluating the run for the first time meanwhile must not store its result
    # either: this placeholder makes its insert conflict (runs_to_evaluate treats it as none).
    cursor_row = {"run_id": run_id, "last_step": -1, "state": {}, "updated_at": now}
    insert_ignore(session, SqlEvalCursor, [cursor_row])
    return int(removed or 0), last


def finish(
    session: Session, run_id: int, *, status: str, at: datetime, error: str | None = None
) -> None:
    """Mark the run ``finished`` or ``failed``."""
    session.execute(
        update(SqlRun)
        .where(SqlRun.id == run_id)
        .values(status=status, ended_at=at, heartbeat_at=at, error=_storable(error, 2000))
    )


# -- reads ---------------------------------------------------------------------------------------


def get_run(db: Database, run_id: int) -> Run:
    with db.session() as s:
        found = s.execute(_runs_query().where(SqlRun.id == run_id)).first()
        if found is None:
            raise RunNotFound(f"no run with id {run_id}")
        return as_run(*found)


def get_runs(db: Database, run_ids: list[int]) -> list[Run]:
    """The runs with these ids (those that exist), in no particular order."""
    if not run_ids:
        return []
    with db.session() as s:
        rows = s.execute(_runs_query().where(SqlRun.id.in_(list(run_ids)))).all()
        return [as_run(*row) for row in rows]


def find_run(db: Database, name_or_uid: str, project: str | None = None) -> Run:
    """The run with this uid, else the newest run with this name (in ``project`` if given).

    A name used in several projects needs ``project`` (or the uid): :class:`AmbiguousRun`.

    >>> find_run(db, "gpt-small-lr3e-3")       # doctest: +SKIP
    Run(id=3, name='gpt-small-lr3e-3', status='finished', ...)
    """
    with db.session() as s:
        query = _runs_query()
        if project is not None:
            query = query.where(SqlProject.name == project)
        by_uid = s.execute(query.where(SqlRun.uid == name_or_uid)).first()
        if by_uid is not None:
            return as_run(*by_uid)
        if project is None:
            projects = s.scalars(
                select(SqlProject.name)
                .join(SqlRun, SqlRun.project_id == SqlProject.id)
                .where(SqlRun.name == name_or_uid)
                .distinct()
                .order_by(SqlProject.name)
            ).all()
            if len(projects) > 1:
                raise AmbiguousRun(
                    f"run name {name_or_uid!r} is used in projects {', '.join(projects)}: "
                    "name the project (--project) or give the run's id"
                )
        by_name = s.execute(
            query.where(SqlRun.name == name_or_uid).order_by(
                SqlRun.started_at.desc(), SqlRun.id.desc()
            )
        ).first()
        if by_name is None:
            where = f" in project {project!r}" if project else ""
            raise RunNotFound(f"no run named {name_or_uid!r}{where}")
        return as_run(*by_name)


def list_runs(
    db: Database,
    *,
    project: str | None = None,
    status: str | None = None,
    name_contains: str | None = None,
    name: str | None = None,
    search: str | None = None,
    limit: int = 1000,
) -> list[Run]:
    """Runs, newest first, optionally filtered by project, stored status, part of the name,
    the exact name, or ``search``: part of the name or of the project, in any case."""
    query = _runs_query().order_by(SqlRun.started_at.desc(), SqlRun.id.desc()).limit(limit)
    if project is not None:
        query = query.where(SqlProject.name == project)
    if status is not None:
        query = query.where(SqlRun.status == status)
    if name_contains:
        query = query.where(SqlRun.name.icontains(name_contains, autoescape=True))
    if name is not None:
        query = query.where(SqlRun.name == name)
    if search:
        query = query.where(
            SqlRun.name.icontains(search, autoescape=True)
            | SqlProject.name.icontains(search, autoescape=True)
        )
    with db.session() as s:
        return [as_run(*row) for row in s.execute(query).all()]


def live_runs(db: Database) -> list[Run]:
    """Runs whose stored status is ``running`` (some may be stalled)."""
    return list_runs(db, status="running", limit=100_000)


def list_projects(db: Database) -> list[str]:
    with db.session() as s:
        return list(s.scalars(select(SqlProject.name).order_by(SqlProject.name)))


def layers(db: Database, run_id: int) -> list[Layer]:
    """The run's monitored layers in model order."""
    with db.session() as s:
        rows = s.scalars(
            select(SqlLayer).where(SqlLayer.run_id == run_id).order_by(SqlLayer.position)
        )
        return [_to_layer(r) for r in rows]


def count_runs(db: Database) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(SqlRun)) or 0


def delete_runs(db: Database, run_ids: list[int]) -> int:
    """Delete runs with everything stored for them (layers, statistics, scalars, alerts, their
    notifications, silences) in one transaction; returns how many runs were deleted.

    The schema's foreign keys cascade. A trainer still writing to a deleted run has its rows
    refused by those keys (its writer sets them aside in ``<run uid>.jsonl.rejected``), so
    ``tripwire runs delete`` refuses runs that still report.

    >>> delete_runs(db, [find_run(db, "scratch-lr1").id])   # doctest: +SKIP
    1
    """
    if not run_ids:
        return 0
    with db.session() as s:
        return s.execute(delete(SqlRun).where(SqlRun.id.in_(list(run_ids)))).rowcount or 0
