"""Alerts, their deliveries, silences, evaluation cursors and service heartbeats.

The alert engine (``alerts/``) writes through :func:`commit_evaluation` and the delivery
queue; the dashboard and the collector's ``halt_on_alert`` read through the query functions.

>>> from storage.alerts import firing_alerts
>>> [a.predictor for a in firing_alerts(db, run.id, severity="critical")]   # doctest: +SKIP
['non_finite']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import (
    Text,
    bindparam,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased

from storage._models import (
    SqlAlert,
    SqlEvalCursor,
    SqlNotification,
    SqlRun,
    SqlServiceHeartbeat,
    SqlSilence,
)
from storage.db import Database
from storage.entities import Alert, Notification, Silence
from storage.upsert import insert_ignore

ALERT_STATES = ("pending", "firing", "resolved")
SEVERITIES = ("info", "warning", "critical")
"""Alert severities, weakest first."""
NOTIFICATION_STATUSES = ("queued", "sending", "sent", "failed")
"""``queued`` and ``sending`` are the delivery queue; ``sent`` and ``failed`` are outcomes."""
REWIND_PREFIX = '{"rewound_to"'
"""How a cursor's state begins while a resumed run's rewind waits for the scheduler: the key
comes first (:func:`storage.runs.rewind` writes it alone, :mod:`alerts.service` keeps it first)."""


def _to_alert(row: SqlAlert) -> Alert:
    return Alert(
        id=row.id,
        run_id=row.run_id,
        predictor=row.predictor,
        layer=row.layer,
        fingerprint=row.fingerprint,
        severity=row.severity,
        state=row.state,
        first_step=row.first_step,
        last_step=row.last_step,
        created_at=row.created_at,
        updated_at=row.updated_at,
        score=row.score,
        message=row.message,
        details=row.details,
        fired_step=row.fired_step,
        resolved_step=row.resolved_step,
        hold_count=row.hold_count,
        last_notified_step=row.last_notified_step,
    )


def _to_notification(row: SqlNotification) -> Notification:
    return Notification(
        id=row.id,
        alert_id=row.alert_id,
        notifier=row.notifier,
        event=row.event,
        status=row.status,
        attempts=row.attempts,
        created_at=row.created_at,
        error=row.error,
    )


def _to_silence(row: SqlSilence) -> Silence:
    return Silence(
        id=row.id,
        run_id=row.run_id,
        created_at=row.created_at,
        until=row.until,
        reason=row.reason,
        created_by=row.created_by,
    )


# -- alerts ---------------------------------------------------------------------------------------


def list_alerts(
    db: Database,
    *,
    run_id: int | None = None,
    states: list[str] | tuple[str, ...] | None = None,
    severity: str | None = None,
    predictor: str | None = None,
    limit: int = 1000,
) -> list[Alert]:
    """Alerts, newest first, optionally filtered.

    >>> list_alerts(db, run_id=3, states=["firing"])          # doctest: +SKIP
    [Alert(id=7, predictor='sa_collapse', layer='blocks.2.mlp.fc', state='firing', ...)]
    """
    query = select(SqlAlert).order_by(SqlAlert.updated_at.desc(), SqlAlert.id.desc()).limit(limit)
    if run_id is not None:
        query = query.where(SqlAlert.run_id == run_id)
    if states is not None:
        query = query.where(SqlAlert.state.in_(list(states)))
    if severity is not None:
        query = query.where(SqlAlert.severity == severity)
    if predictor is not None:
        query = query.where(SqlAlert.predictor == predictor)
    with db.session() as s:
        return [_to_alert(r) for r in s.scalars(query)]


def firing_alerts(db: Database, run_id: int, *, severity: str | None = None) -> list[Alert]:
    """The run's alerts that are firing now (``halt_on_alert`` polls this with ``"critical"``).

    >>> firing_alerts(db, run.id, severity="critical")      # doctest: +SKIP
    []
    """
    return list_alerts(db, run_id=run_id, states=["firing"], severity=severity)


def open_alerts(db: Database, run_ids: list[int]) -> dict[int, list[Alert]]:
    """Pending and firing alerts of these runs, by run id (the engine's working set)."""
    found: dict[int, list[Alert]] = {rid: [] for rid in run_ids}
    if not run_ids:
        return found
    query = (
        select(SqlAlert)
        .where(SqlAlert.run_id.in_(run_ids), SqlAlert.state.in_(["pending", "firing"]))
        .order_by(SqlAlert.id)
    )
    with db.session() as s:
        for row in s.scalars(query):
            found[row.run_id].append(_to_alert(row))
    return found


# -- evaluation cursors and the engine's atomic write ------------------------------------------


@dataclass(frozen=True)
class EvalCursor:
    """How far the engine evaluated a run, and the predictors' memory at that point."""

    run_id: int
    last_step: int
    state: dict
    updated_at: datetime


def eval_cursors(db: Database, run_ids: list[int]) -> dict[int, EvalCursor]:
    if not run_ids:
        return {}
    with db.session() as s:
        rows = s.scalars(select(SqlEvalCursor).where(SqlEvalCursor.run_id.in_(run_ids)))
        return {
            r.run_id: EvalCursor(r.run_id, r.last_step, r.state or {}, r.updated_at) for r in rows
        }


def runs_to_evaluate(
    db: Database,
    *,
    now: datetime,
    finished_grace_s: float,
    inhibitors: tuple[str, ...] = (),
    live_only: tuple[str, ...] = (),
) -> list[int]:
    """Ids of runs the live engine should look at.

    Running runs, plus ended runs whose last data has not been evaluated yet: those with a
    cursor behind their last step or moved back by a resume (:func:`storage.runs.rewind`, its
    alerts about the replaced steps still to end), or without a cursor that ended less than
    ``finished_grace_s`` ago (older history is not back-filled with notifications). Plus ended
    runs with a firing alert never told (``last_notified_step`` null: held back by a silence)
    that nothing keeps quiet any more: no silence in force at ``now``, and not a weaker
    (non-critical) alert that fired at or after a firing alert of one of ``inhibitors`` (an
    ended run's firing alerts stay firing, so that inhibition never ends). Plus ended runs with
    an open alert of one of ``live_only`` (``stalled``, ``no_progress``: they resolve when the
    run ends, also when it ends with no step left to evaluate, as ``tripwire runs end`` does).

    >>> runs_to_evaluate(db, now=utcnow(), finished_grace_s=600, inhibitors=("non_finite",))  # doctest: +SKIP
    [3, 7]
    """
    since = now - timedelta(seconds=finished_grace_s)
    held, blowup = aliased(SqlAlert), aliased(SqlAlert)
    inhibited = (
        (held.severity != "critical")
        & held.predictor.not_in(inhibitors)
        & exists().where(
            blowup.run_id == held.run_id,
            blowup.state == "firing",
            blowup.predictor.in_(inhibitors),
            blowup.fired_step <= held.fired_step,
        )
    )
    held_back = exists().where(
        held.run_id == SqlRun.id,
        held.state == "firing",
        held.last_notified_step.is_(None),
        ~inhibited,
    )
    silenced = exists().where(
        SqlSilence.run_id == SqlRun.id, or_(SqlSilence.until.is_(None), SqlSilence.until > now)
    )
    ended_while_open = (SqlRun.status != "running") & exists().where(
        held.run_id == SqlRun.id,
        held.state.in_(("pending", "firing")),
        held.predictor.in_(live_only),
    )
    state = type_coerce(SqlEvalCursor.state, Text)
    # The cursor a resume inserts for a run never evaluated (storage.runs.rewind) counts as none.
    placeholder = (SqlEvalCursor.last_step == -1) & (state == "{}")
    # A rewind still to judge: its state starts with the key (storage.runs.rewind writes it
    # first). A prefix, not a search: every tick reads this for every ended run, and a
    # predictor memory is ~1 KB per layer (PostgreSQL reads only a slice of it for substr).
    rewinding = func.substr(state, 1, len(REWIND_PREFIX)) == REWIND_PREFIX
    query = (
        select(SqlRun.id)
        .outerjoin(SqlEvalCursor, SqlEvalCursor.run_id == SqlRun.id)
        .where(
            or_(
                SqlRun.status == "running",
                (SqlEvalCursor.run_id.is_not(None))
                & ~placeholder
                & (SqlRun.last_step.is_not(None))
                & (SqlEvalCursor.last_step < SqlRun.last_step),
                rewinding,
                (SqlEvalCursor.run_id.is_(None) | placeholder) & (SqlRun.ended_at >= since),
                held_back & ~silenced,
                ended_while_open,
            )
        )
        .order_by(SqlRun.id)
    )
    with db.session() as s:
        return list(s.scalars(query))


@dataclass
class AlertWrite:
    """One alert row for :func:`commit_evaluation`: insert (``id`` None), update, or delete.

    ``notify`` lists the deliveries to queue for it as (notifier name, event) pairs.
    """

    id: int | None
    values: dict
    delete: bool = False
    notify: list[tuple[str, str]] = field(default_factory=list)


def commit_evaluation(
    db: Database,
    run_id: int,
    *,
    expected_step: int | None,
    last_step: int,
    state: dict,
    writes: list[AlertWrite],
    expected_at: datetime | None = None,
) -> list[int | None] | None:
    """Store the engine's result for one run atomically; returns the alert ids (None if deleted).

    The cursor moves from ``expected_step`` (None: no cursor yet) to ``last_step``. If another
    evaluator moved it first, nothing is written and None is returned, so two schedulers
    never queue the same notification twice. ``expected_at`` (the cursor's ``updated_at`` as
    read) also catches one that stored a result without moving it (no new step, but alerts
    told once a silence ended).
    """
    now = db.now()  # the server's clock: the dashboard and fail_interrupted compare with it
    cursors = SqlEvalCursor.__table__
    with db.session() as s:
        if expected_step is None:
            dialect = s.get_bind().dialect.name
            insert_new = postgresql.insert if dialect == "postgresql" else sqlite.insert
            moved = s.execute(
                insert_new(cursors)
                .values(run_id=run_id, last_step=last_step, state=state, updated_at=now)
                .on_conflict_do_nothing()
                .returning(cursors.c.run_id)
            ).first()
        else:
            same = [cursors.c.run_id == run_id, cursors.c.last_step == expected_step]
            if expected_at is not None:
                same.append(cursors.c.updated_at == expected_at)
            moved = s.execute(
                update(cursors)
                .where(*same)
                .values(last_step=last_step, state=state, updated_at=now)
                .returning(cursors.c.run_id)
            ).first()
        if moved is None:
            s.rollback()
            return None
        return _write_alerts(s, run_id, writes, now)


def _write_alerts(
    session: Session, run_id: int, writes: list[AlertWrite], now: datetime
) -> list[int | None]:
    """The alert writes and their queued notifications, a statement per kind, not per alert:
    every open alert of a run changes at every tick (one ORM statement each took ~2 ms on
    PostgreSQL, most of a tick with 100 live runs)."""
    alerts = SqlAlert.__table__
    ids: list[int | None] = [None] * len(writes)
    gone = [w.id for w in writes if w.delete and w.id is not None]
    if gone:
        session.execute(delete(alerts).where(alerts.c.id.in_(gone)))
    new: dict[tuple, list[tuple[int, dict]]] = {}  # by the columns given: one statement each
    changed: dict[tuple, list[dict]] = {}
    for i, write in enumerate(writes):
        if write.delete:
            continue
        if write.id is None:
            row = dict(write.values, run_id=run_id, created_at=now, updated_at=now)
            new.setdefault(tuple(sorted(row)), []).append((i, row))
        else:
            ids[i] = write.id
            row = dict(write.values, updated_at=now, alert_id=write.id)
            changed.setdefault(tuple(sorted(row)), []).append(row)
    for rows in new.values():
        made = session.execute(
            insert(alerts).returning(alerts.c.id, sort_by_parameter_order=True),
            [row for _, row in rows],
        ).scalars()
        for (i, _), alert_id in zip(rows, made, strict=True):
            ids[i] = alert_id
    for rows in changed.values():
        session.execute(update(alerts).where(alerts.c.id == bindparam("alert_id")), rows)
    queued = [
        {
            "alert_id": ids[i],
            "notifier": notifier,
            "event": event,
            "status": "queued",
            "attempts": 0,
            "created_at": now,
        }
        for i, write in enumerate(writes)
        if not write.delete
        for notifier, event in write.notify
    ]
    if queued:
        session.execute(insert(SqlNotification.__table__), queued)
    return ids


def reset_evaluation(db: Database, run_id: int) -> None:
    """Forget a run's cursor and alerts (re-evaluate from scratch; notifications go too)."""
    with db.session() as s:
        s.execute(delete(SqlAlert).where(SqlAlert.run_id == run_id))
        s.execute(delete(SqlEvalCursor).where(SqlEvalCursor.run_id == run_id))


# -- notifications --------------------------------------------------------------------------------


def list_notifications(
    db: Database, *, alert_id: int | None = None, status: str | None = None, limit: int = 1000
) -> list[Notification]:
    """Deliveries, newest first.

    >>> [(n.notifier, n.event, n.status, n.attempts) for n in list_notifications(db)]  # doctest: +SKIP
    [('slack', 'firing', 'sent', 2)]
    """
    query = (
        select(SqlNotification)
        .order_by(SqlNotification.created_at.desc(), SqlNotification.id.desc())
        .limit(limit)
    )
    if alert_id is not None:
        query = query.where(SqlNotification.alert_id == alert_id)
    if status is not None:
        query = query.where(SqlNotification.status == status)
    with db.session() as s:
        return [_to_notification(r) for r in s.scalars(query)]


def claim_queued(db: Database, *, limit: int = 500) -> list[tuple[Notification, Alert]]:
    """Take queued deliveries (oldest first) and mark them ``sending``; each is claimed once."""
    with db.session() as s:
        rows = s.execute(
            select(SqlNotification, SqlAlert)
            .join(SqlAlert, SqlAlert.id == SqlNotification.alert_id)
            .where(SqlNotification.status == "queued")
            .order_by(SqlNotification.id)
            .limit(limit)
        ).all()
        claimed = []
        for note, alert in rows:
            taken = s.execute(
                update(SqlNotification)
                .where(SqlNotification.id == note.id, SqlNotification.status == "queued")
                .values(status="sending")
            )
            if taken.rowcount == 1:
                note.status = "sending"
                claimed.append((_to_notification(note), _to_alert(alert)))
        return claimed


def queued_deliveries(db: Database, *, limit: int = 500) -> list[tuple[Notification, Alert]]:
    """Queued deliveries, oldest first, without taking them: :func:`claim` each before sending."""
    with db.session() as s:
        rows = s.execute(
            select(SqlNotification, SqlAlert)
            .join(SqlAlert, SqlAlert.id == SqlNotification.alert_id)
            .where(SqlNotification.status == "queued")
            .order_by(SqlNotification.id)
            .limit(limit)
        ).all()
        return [(_to_notification(note), _to_alert(alert)) for note, alert in rows]


def claim(db: Database, notification_ids: list[int]) -> list[int]:
    """Take these queued deliveries (queued → sending); returns the ids this caller got.

    Claim just before sending: a process killed mid-delivery then leaves only the one message
    it was sending in ``sending`` (recorded as failed later), and the rest still queued.
    """
    taken = []
    with db.session() as s:
        for note_id in notification_ids:
            done = s.execute(
                update(SqlNotification)
                .where(SqlNotification.id == note_id, SqlNotification.status == "queued")
                .values(status="sending")
            )
            if done.rowcount == 1:
                taken.append(note_id)
    return taken


def finish_delivery(
    db: Database, notification_ids: list[int], *, status: str, attempts: int, error: str | None
) -> None:
    """Record the outcome (``sent`` or ``failed``) of claimed deliveries."""
    if not notification_ids:
        return
    with db.session() as s:
        s.execute(
            update(SqlNotification)
            .where(SqlNotification.id.in_(notification_ids))
            .values(status=status, attempts=attempts, error=error and error[:2000])
        )


def mark_notified(db: Database, alert_ids: list[int], step_by_alert: dict[int, int]) -> None:
    with db.session() as s:
        for alert_id in alert_ids:
            s.execute(
                update(SqlAlert)
                .where(SqlAlert.id == alert_id)
                .values(last_notified_step=step_by_alert[alert_id])
            )


def fail_interrupted(db: Database, *, older_than: datetime) -> int:
    """Mark deliveries left ``sending`` by a stopped process as failed (never resent twice)."""
    with db.session() as s:
        done = s.execute(
            update(SqlNotification)
            .where(SqlNotification.status == "sending", SqlNotification.created_at < older_than)
            .values(status="failed", error="interrupted: the sender stopped during delivery")
        )
        return done.rowcount or 0


def record_notification(
    db: Database,
    *,
    alert_id: int | None,
    notifier: str,
    event: str,
    status: str,
    attempts: int,
    error: str | None = None,
) -> int:
    """Record one finished delivery (e.g. a ``test`` message); returns its id."""
    with db.session() as s:
        row = SqlNotification(
            alert_id=alert_id,
            notifier=notifier,
            event=event,
            status=status,
            attempts=attempts,
            error=error and error[:2000],
            created_at=db.now(),
        )
        s.add(row)
        s.flush()
        return row.id


# -- silences -------------------------------------------------------------------------------------


def silence_run(
    db: Database,
    run_id: int,
    *,
    until: datetime | None,
    reason: str | None = None,
    created_by: str | None = None,
) -> Silence:
    """Silence a run's notifications until ``until`` (naive UTC), or until removed if None.

    Alerts are still evaluated and stored; only their notifications are held back.

    >>> silence_run(db, run.id, until=utcnow() + timedelta(hours=2), reason="known issue")  # doctest: +SKIP
    """
    with db.session() as s:
        row = SqlSilence(
            run_id=run_id,
            until=until,
            reason=reason and reason[:1000],
            created_by=created_by and created_by[:255],
            created_at=db.now(),
        )
        s.add(row)
        s.flush()
        return _to_silence(row)


def unsilence_run(db: Database, run_id: int) -> int:
    """Remove every silence of the run; returns how many were removed."""
    with db.session() as s:
        return s.execute(delete(SqlSilence).where(SqlSilence.run_id == run_id)).rowcount or 0


def active_silences(db: Database, now: datetime, run_id: int | None = None) -> list[Silence]:
    """Silences in force at ``now`` (naive UTC), newest first."""
    query = (
        select(SqlSilence)
        .where(or_(SqlSilence.until.is_(None), SqlSilence.until > now))
        .order_by(SqlSilence.created_at.desc(), SqlSilence.id.desc())
    )
    if run_id is not None:
        query = query.where(SqlSilence.run_id == run_id)
    with db.session() as s:
        return [_to_silence(r) for r in s.scalars(query)]


# -- service heartbeats ---------------------------------------------------------------------------


def beat(db: Database, name: str, info: dict, *, at: datetime | None = None) -> None:
    """Record that service ``name`` is alive (e.g. the scheduler after each tick).

    >>> beat(db, "scheduler", {"runs": 3, "tick_s": 0.02})     # doctest: +SKIP
    """
    row = {"name": name, "last_seen": at or db.now(), "info": info}
    with db.session() as s:
        insert_ignore(s, SqlServiceHeartbeat, [row], update=("last_seen", "info"))


def last_beat(db: Database, name: str) -> tuple[datetime, dict] | None:
    """(last seen, info) of service ``name``, or None if it never ran."""
    with db.session() as s:
        row = s.get(SqlServiceHeartbeat, name)
        if row is None:
            return None
        return row.last_seen, row.info or {}
