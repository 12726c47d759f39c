"""SQLAlchemy ORM models. Private: nothing outside ``storage`` imports them.

The schema itself is owned by the Alembic migrations in ``storage/migrations``;
these classes mirror it for queries and must change together with a new migration.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from storage.types import Counts, FaithfulFloat, JSONText


class Base(DeclarativeBase):
    pass


class SqlProject(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime]


class SqlRun(Base):
    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uid: Mapped[str] = mapped_column(String(64), unique=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(512))
    status: Mapped[str] = mapped_column(String(16))  # running | finished | failed
    config: Mapped[dict | None] = mapped_column(JSONText)
    tags: Mapped[list | None] = mapped_column(JSONText)
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None]
    every: Mapped[int | None]
    sa_bin_edges: Mapped[list | None] = mapped_column(JSONText)
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    logged_at: Mapped[datetime | None]  # the trainer's newest log() that was written
    last_step: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(String(2000))
    __table_args__ = (
        Index("ix_runs_project_name", "project_id", "name"),
        Index("ix_runs_status", "status"),
    )


class SqlLayer(Base):
    __tablename__ = "layers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(512))
    position: Mapped[int]  # model order
    kind: Mapped[str | None] = mapped_column(String(64))
    shape: Mapped[list | None] = mapped_column(JSONText)
    __table_args__ = (UniqueConstraint("run_id", "name", name="uq_layers_run_name"),)


class SqlScalar(Base):
    __tablename__ = "scalars"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[float | None] = mapped_column(FaithfulFloat)
    wall_time: Mapped[float | None] = mapped_column(FaithfulFloat)
    __table_args__ = (Index("ix_scalars_run_step", "run_id", "step"),)


class SqlLayerStat(Base):
    __tablename__ = "layer_stats"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    layer_id: Mapped[int] = mapped_column(
        ForeignKey("layers.id", ondelete="CASCADE"), primary_key=True
    )
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    wall_time: Mapped[float | None] = mapped_column(FaithfulFloat)
    grad_norm: Mapped[float | None] = mapped_column(FaithfulFloat)
    weight_norm: Mapped[float | None] = mapped_column(FaithfulFloat)
    sigma1: Mapped[float | None] = mapped_column(FaithfulFloat)
    stable_rank: Mapped[float | None] = mapped_column(FaithfulFloat)
    v_drift: Mapped[float | None] = mapped_column(FaithfulFloat)
    sa_pos: Mapped[float | None] = mapped_column(FaithfulFloat)
    sa_imbalance: Mapped[float | None] = mapped_column(FaithfulFloat)
    sa_mean: Mapped[float | None] = mapped_column(FaithfulFloat)
    sa_abs_mean: Mapped[float | None] = mapped_column(FaithfulFloat)
    act_max: Mapped[float | None] = mapped_column(FaithfulFloat)
    act_norm_mean: Mapped[float | None] = mapped_column(FaithfulFloat)
    sa_c_abs_mean: Mapped[float | None] = mapped_column(FaithfulFloat)
    sa_c_imbalance: Mapped[float | None] = mapped_column(FaithfulFloat)
    update_ratio: Mapped[float | None] = mapped_column(FaithfulFloat)
    sa_hist: Mapped[list | None] = mapped_column(Counts)
    __table_args__ = (
        Index("ix_layer_stats_run_step", "run_id", "step"),
        Index("ix_layer_stats_layer", "layer_id"),  # a layer's delete cascades by it
    )


class SqlLayerStatBucket(Base):
    """Extremes of some layer statistics over one step bucket (see :mod:`storage.rollup`)."""

    __tablename__ = "layer_stat_buckets"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True)
    layer_id: Mapped[int] = mapped_column(
        ForeignKey("layers.id", ondelete="CASCADE"), primary_key=True
    )
    step_min: Mapped[int]
    step_max: Mapped[int]
    n: Mapped[int]
    grad_norm_min: Mapped[float | None] = mapped_column(FaithfulFloat)
    grad_norm_max: Mapped[float | None] = mapped_column(FaithfulFloat)
    weight_norm_min: Mapped[float | None] = mapped_column(FaithfulFloat)
    weight_norm_max: Mapped[float | None] = mapped_column(FaithfulFloat)
    sigma1_min: Mapped[float | None] = mapped_column(FaithfulFloat)
    sigma1_max: Mapped[float | None] = mapped_column(FaithfulFloat)
    stable_rank_min: Mapped[float | None] = mapped_column(FaithfulFloat)
    stable_rank_max: Mapped[float | None] = mapped_column(FaithfulFloat)
    sa_imbalance_min: Mapped[float | None] = mapped_column(FaithfulFloat)
    sa_imbalance_max: Mapped[float | None] = mapped_column(FaithfulFloat)
    __table_args__ = (Index("ix_layer_stat_buckets_layer", "layer_id"),)


class SqlAlert(Base):
    """One alert episode of a (run, predictor, layer) fingerprint: pending → firing → resolved."""

    __tablename__ = "alerts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    predictor: Mapped[str] = mapped_column(String(64))
    layer: Mapped[str | None] = mapped_column(String(512))
    fingerprint: Mapped[str] = mapped_column(String(128))
    severity: Mapped[str] = mapped_column(String(16))  # info | warning | critical
    state: Mapped[str] = mapped_column(String(16))  # pending | firing | resolved
    score: Mapped[float | None] = mapped_column(FaithfulFloat)
    message: Mapped[str | None] = mapped_column(String(2000))
    details: Mapped[dict | None] = mapped_column(JSONText)
    first_step: Mapped[int]  # first step the condition held
    fired_step: Mapped[int | None]
    last_step: Mapped[int]  # last step evaluated for this episode
    resolved_step: Mapped[int | None]
    hold_count: Mapped[int] = mapped_column(Integer, default=0)
    last_notified_step: Mapped[int | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    __table_args__ = (
        Index("ix_alerts_run_state", "run_id", "state"),
        Index("ix_alerts_fingerprint", "fingerprint"),
    )


class SqlNotification(Base):
    """Every delivery attempt outcome: which alert, which notifier, sent or failed, how many tries."""

    __tablename__ = "notifications"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_id: Mapped[int | None] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"))
    notifier: Mapped[str] = mapped_column(String(64))
    event: Mapped[str] = mapped_column(String(16))  # firing | repeat | resolved | test
    status: Mapped[str] = mapped_column(String(16))  # sent | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(String(2000))
    created_at: Mapped[datetime]
    __table_args__ = (Index("ix_notifications_alert", "alert_id"),)


class SqlEvalCursor(Base):
    """How far the alert engine has evaluated a run, so a restart resumes where it stopped."""

    __tablename__ = "eval_cursors"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    last_step: Mapped[int]
    state: Mapped[dict | None] = mapped_column(JSONText)  # predictor memory (EMAs, baselines)
    updated_at: Mapped[datetime]


class SqlSilence(Base):
    __tablename__ = "silences"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    until: Mapped[datetime | None]  # None: until removed
    reason: Mapped[str | None] = mapped_column(String(1000))
    created_by: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime]
    __table_args__ = (Index("ix_silences_run", "run_id"),)


class SqlServiceHeartbeat(Base):
    """Liveness of long-running services (the scheduler's last tick), for the health page."""

    __tablename__ = "service_heartbeats"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_seen: Mapped[datetime]
    info: Mapped[dict | None] = mapped_column(JSONText)
