"""Copy an ended run, with its statistics and alerts, into another Tripwire database: a run
trained against a laptop's SQLite file, brought to the team's PostgreSQL.

>>> from storage import Database, runs
>>> from storage.copy import copy_run
>>> laptop, team = Database("sqlite:///tripwire.db"), Database(os.environ["TRIPWIRE_DB_URL"])  # doctest: +SKIP
>>> copy_run(laptop, team, runs.find_run(laptop, "gpt-small-lr3e-3"))  # doctest: +SKIP
Copied(name='gpt-small-lr3e-3', scalars=4000, layer_rows=1920, alerts=2)
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from storage import alerts as alert_store
from storage import rollup, runs, stats
from storage._models import SqlAlert, SqlEvalCursor, SqlRun, SqlSilence
from storage.db import Database
from storage.entities import Run
from storage.errors import RunNotFound, StorageError

CHUNK_STEPS = 2000
"""Steps read from the source and written at a time (memory stays bounded on long runs)."""


@dataclass(frozen=True)
class Copied:
    name: str
    scalars: int
    layer_rows: int
    alerts: int


def copy_run(
    source: Database, target: Database, run: Run, *, live_only: tuple[str, ...] = ()
) -> Copied:
    """Copy ``run`` of ``source`` (same uid, name, project, config, times and status) with its
    scalars, layer statistics, alerts, silences and the alert engine's cursor into ``target``,
    in one transaction: a copy that fails leaves nothing behind. Deliveries (``notifications``)
    stay behind: the copy's alerts are not sent again (the silences come along so that an alert
    a silence held back is held back in ``target`` too, not sent there as never told).

    Refuses a run still ``running`` (its trainer writes to ``source``), one ``target``
    already holds (delete it there to copy it again), and one with an open alert of
    ``live_only`` (``stalled``, ``no_progress``): the scheduler of ``source`` resolves it at its
    next tick and says so; copied open, the scheduler of ``target`` would say so too.
    """
    if run.status == "running":
        raise StorageError(
            f"run {run.name} is still running in the source; copy it once it ended (if its "
            "trainer died, `tripwire runs end` it first)"
        )
    unresolved = sorted(
        {a.predictor for a in alert_store.open_alerts(source, [run.id])[run.id]} & set(live_only)
    )
    if unresolved:
        raise StorageError(
            f"run {run.name} ended with its {', '.join(unresolved)} alert still open: copy it "
            "once the source's scheduler resolved it (its next tick, or `tripwire scheduler "
            "--once` with the source's --db)"
        )
    scalars = layer_rows = 0
    with target.session() as s:
        if s.scalar(select(SqlRun.id).where(SqlRun.uid == run.uid)) is not None:
            raise StorageError(
                f"run {run.name} ({run.uid}) is already in the target database; "
                "delete it there to copy it again"
            )
        run_id = runs.ensure_run(
            s,
            uid=run.uid,
            project=run.project,
            name=run.name,
            started_at=run.started_at,
            config=run.config,
            tags=run.tags,
            host=run.host,
            pid=run.pid,
            every=run.every,
            sa_bin_edges=run.sa_bin_edges,
        )
        layers = runs.layers(source, run.id)
        layer_ids = runs.ensure_layers(
            s,
            run_id,
            [
                {"name": x.name, "position": x.position, "kind": x.kind, "shape": x.shape}
                for x in layers
            ],
        )
        width = rollup.run_width(s, run_id)
        last = max(
            (step for step in stats.last_steps(source, run.id) if step is not None), default=-1
        )
        for after in range(-1, last, CHUNK_STEPS):
            window = {"after_step": after, "upto_step": after + CHUNK_STEPS}
            points = stats.scalar_series(source, run.id, **window)
            stats.write_scalars(s, run_id, [vars(p) for p in points])  # not asdict: it deep-copies
            rows = stats.layer_stats(source, run.id, **window)
            stats.write_layer_stats(s, run_id, layer_ids, [vars(r) for r in rows], width)
            scalars, layer_rows = scalars + len(points), layer_rows + len(rows)
        with source.session() as src:
            alerts = _rows(src, SqlAlert, run.id, run_id)
            silences = _rows(src, SqlSilence, run.id, run_id)
            cursor = src.get(SqlEvalCursor, run.id)
            cursor_row = cursor and {
                "run_id": run_id,
                "last_step": cursor.last_step,
                "state": cursor.state,
                "updated_at": cursor.updated_at,
            }
        if _changed(source, run):  # read in several statements: judged once, at the end
            raise StorageError(
                f"run {run.name} changed in the source while it was copied (resumed or "
                "deleted); nothing was copied"
            )
        if alerts:
            s.execute(insert(SqlAlert), alerts)
        if silences:
            s.execute(insert(SqlSilence), silences)
        if cursor_row:
            s.execute(insert(SqlEvalCursor), [cursor_row])
        s.execute(
            update(SqlRun)
            .where(SqlRun.id == run_id)
            .values(
                status=run.status,
                ended_at=run.ended_at,
                heartbeat_at=run.heartbeat_at,
                last_step=run.last_step,
                logged_at=run.logged_at,
                error=run.error,
            )
        )
    return Copied(run.name, scalars, layer_rows, len(alerts))


def _rows(src: Session, model, from_run: int, to_run: int) -> list[dict]:
    """``model``'s rows of run ``from_run`` as rows of run ``to_run`` (their own ids left to the
    target)."""
    columns = [c.name for c in model.__table__.columns if c.name not in ("id", "run_id")]
    found = src.scalars(select(model).where(model.run_id == from_run))
    return [{c: getattr(row, c) for c in columns} | {"run_id": to_run} for row in found]


def _changed(source: Database, run: Run) -> bool:
    """Whether ``run`` is gone from ``source`` or no longer as it was read (a resume moves its
    status, last step and heartbeat)."""
    try:
        now = runs.get_run(source, run.id)
    except RunNotFound:
        return True
    fields = ("uid", "status", "last_step", "ended_at", "heartbeat_at")
    return any(getattr(now, f) != getattr(run, f) for f in fields)
