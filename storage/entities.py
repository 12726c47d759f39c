"""Plain data returned by storage queries. ORM rows never leave a session; these do.

Times are naive UTC ``datetime``s; ``wall_time`` values are Unix seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

RUN_STATUSES = ("running", "finished", "failed")
"""Stored run statuses. ``stalled`` is derived: a running run whose heartbeat is old."""

STALLED_AFTER_S = 300.0
"""Seconds without a report after which a running run counts as stalled, by default: for the
``stalled`` alert, the dashboard and ``tripwire runs`` alike. ``[predictors.stalled] after_s``
in ``tripwire.toml`` changes it for all three (``alerts.predictors.stalled.configured_after_s``)."""

STEP_STATISTICS = ("loss", "lr", "grad_norm", "weight_norm")
"""Per-step statistic names of the data contract (user scalars come beside them)."""

LAYER_STATISTICS = (
    "grad_norm",
    "weight_norm",
    "sigma1",
    "stable_rank",
    "v_drift",
    "sa_pos",
    "sa_imbalance",
    "sa_mean",
    "sa_abs_mean",
    "act_max",
    "act_norm_mean",
    "sa_c_abs_mean",
    "sa_c_imbalance",
    "update_ratio",
)
"""Per-layer, per-check statistic names of the data contract (plus the histogram ``sa_hist``)."""


DEFAULT_PROJECT = "default"


def run_label(name: str, project: str) -> str:
    """How a run is named in one line of text: ``project/name``, or ``name`` alone in the
    default project (two teams' runs may share a name).

    >>> run_label("baseline", "alpha"), run_label("baseline", "default")
    ('alpha/baseline', 'baseline')
    """
    return name if project == DEFAULT_PROJECT else f"{project}/{name}"


def listed(items: list[str], limit: int = 5) -> str:
    """The first ``limit`` of ``items`` in one line of text, and how many more there are.

    >>> listed(["a", "b"]), listed(list("abcdefg"))
    ('a, b', 'a, b, c, d, e and 2 more')
    """
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


@dataclass(frozen=True)
class Run:
    id: int
    uid: str
    project: str
    name: str
    status: str
    started_at: datetime
    config: dict = field(default_factory=dict)
    tags: list = field(default_factory=list)
    host: str | None = None
    pid: int | None = None
    every: int | None = None
    sa_bin_edges: list[float] | None = None
    ended_at: datetime | None = None
    heartbeat_at: datetime | None = None
    last_step: int | None = None
    logged_at: datetime | None = None
    """When the trainer logged the newest step written (its clock); None before any."""
    error: str | None = None

    @property
    def last_seen(self) -> datetime:
        """When the run last reported: its last heartbeat (ending it is one), else its start."""
        return self.heartbeat_at or self.started_at

    def is_stalled(self, now: datetime, after_seconds: float = STALLED_AFTER_S) -> bool:
        """A running run that has not reported for ``after_seconds`` (its trainer likely died)."""
        if self.status != "running":
            return False
        return (now - self.last_seen).total_seconds() > after_seconds


@dataclass(frozen=True)
class Layer:
    id: int
    run_id: int
    name: str
    position: int
    kind: str | None = None
    shape: list[int] | None = None


@dataclass(frozen=True)
class ScalarPoint:
    step: int
    key: str
    value: float | None
    wall_time: float | None = None


@dataclass(frozen=True)
class LayerStat:
    step: int
    layer: str
    wall_time: float | None = None
    grad_norm: float | None = None
    weight_norm: float | None = None
    sigma1: float | None = None
    stable_rank: float | None = None
    v_drift: float | None = None
    sa_pos: float | None = None
    sa_imbalance: float | None = None
    sa_mean: float | None = None
    sa_abs_mean: float | None = None
    act_max: float | None = None
    act_norm_mean: float | None = None
    sa_c_abs_mean: float | None = None
    sa_c_imbalance: float | None = None
    update_ratio: float | None = None
    sa_hist: list[int] | None = None


@dataclass(frozen=True)
class Alert:
    id: int
    run_id: int
    predictor: str
    layer: str | None
    fingerprint: str
    severity: str
    state: str
    first_step: int
    last_step: int
    created_at: datetime
    updated_at: datetime
    score: float | None = None
    message: str | None = None
    details: dict | None = None
    fired_step: int | None = None
    resolved_step: int | None = None
    hold_count: int = 0
    last_notified_step: int | None = None


@dataclass(frozen=True)
class Notification:
    id: int
    alert_id: int | None
    notifier: str
    event: str
    status: str
    attempts: int
    created_at: datetime
    error: str | None = None


@dataclass(frozen=True)
class Silence:
    id: int
    run_id: int
    created_at: datetime
    until: datetime | None = None
    reason: str | None = None
    created_by: str | None = None

    def active(self, now: datetime) -> bool:
        return self.until is None or now < self.until
