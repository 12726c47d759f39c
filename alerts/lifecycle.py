"""One alert's lifecycle, counted in evaluations of training steps (never wall time).

pending (the condition holds, fewer than ``for_checks`` times in a row) → firing → resolved
(after ``resolve_after`` clear evaluations in a row). A pending alert whose condition clears is
dropped, as in Prometheus. Each (run, predictor, layer) fingerprint has at most one open
alert; a new episode after a resolution is a new alert.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from alerts.predictors import Verdict
from storage.entities import Alert


def fingerprint(run_id: int, predictor: str, layer: str | None) -> str:
    """The deduplication key of an alert.

    >>> fingerprint(3, "sa_collapse", "blocks.0.mlp.fc")
    '3/sa_collapse/blocks.0.mlp.fc'
    """
    return f"{run_id}/{predictor}/{layer or '-'}"[:128]


@dataclass
class AlertState:
    """A mutable, in-memory alert: what the engine works on between loads and stores."""

    run_id: int
    predictor: str
    layer: str | None
    severity: str
    state: str
    first_step: int
    last_step: int
    hold_count: int = 1
    clear_count: int = 0
    score: float | None = None
    message: str | None = None
    details: dict = field(default_factory=dict)
    fired_step: int | None = None
    resolved_step: int | None = None
    last_notified_step: int | None = None
    id: int | None = None
    dirty: bool = True
    dropped: bool = False

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.run_id, self.predictor, self.layer)

    @classmethod
    def from_entity(cls, alert: Alert) -> AlertState:
        details = dict(alert.details or {})
        return cls(
            run_id=alert.run_id,
            predictor=alert.predictor,
            layer=alert.layer,
            severity=alert.severity,
            state=alert.state,
            first_step=alert.first_step,
            last_step=alert.last_step,
            hold_count=alert.hold_count,
            clear_count=int(details.pop("_clear_count", 0)),
            score=alert.score,
            message=alert.message,
            details=details,
            fired_step=alert.fired_step,
            resolved_step=alert.resolved_step,
            last_notified_step=alert.last_notified_step,
            id=alert.id,
            dirty=False,
        )

    def row(self) -> dict:
        """Column values for storage (the clear count rides in ``details``)."""
        details = dict(self.details)
        if self.clear_count:
            details["_clear_count"] = self.clear_count
        return {
            "predictor": self.predictor,
            "layer": self.layer,
            "fingerprint": self.fingerprint,
            "severity": self.severity,
            "state": self.state,
            "score": self.score,
            "message": (self.message or "")[:2000] or None,
            "details": details or None,
            "first_step": self.first_step,
            "fired_step": self.fired_step,
            "last_step": self.last_step,
            "resolved_step": self.resolved_step,
            "hold_count": self.hold_count,
            "last_notified_step": self.last_notified_step,
        }


def advance(
    alert: AlertState | None,
    verdict: Verdict,
    *,
    run_id: int,
    predictor: str,
    severity: str,
    step: int,
    for_checks: int,
    resolve_after: int,
    context: dict,
) -> tuple[AlertState | None, str | None]:
    """Apply one verdict to the fingerprint's open alert; returns (open alert, transition).

    The transition is ``"firing"``, ``"resolved"``, ``"dropped"`` (a pending alert cleared)
    or None. ``context`` (e.g. the current loss) is merged into the details when it fires.

    >>> a, t = advance(None, Verdict(True, 9.0, "x"), run_id=1, predictor="p", severity="warning",
    ...                step=10, for_checks=2, resolve_after=1, context={})
    >>> a.state, t
    ('pending', None)
    >>> a, t = advance(a, Verdict(True, 9.0, "x"), run_id=1, predictor="p", severity="warning",
    ...                step=20, for_checks=2, resolve_after=1, context={})
    >>> a.state, a.fired_step, t
    ('firing', 20, 'firing')
    """
    if verdict.holds:
        if alert is not None and alert.state == "firing" and step == alert.last_step:
            return alert, None  # judged again at the same step (a wall-time predictor): no news
        if alert is None:
            alert = AlertState(
                run_id=run_id,
                predictor=predictor,
                layer=verdict.layer,
                severity=severity,
                state="pending",
                first_step=step,
                last_step=step,
                hold_count=0,
            )
        alert.hold_count += 1
        alert.clear_count = 0
        alert.last_step = step
        alert.dirty = True
        if alert.state != "pending":
            return alert, None  # firing: what it said when it fired stands
        alert.score = verdict.score
        alert.message = verdict.message
        alert.details = {**verdict.details, **context}
        if alert.hold_count >= for_checks:
            alert.state = "firing"
            alert.fired_step = step
            return alert, "firing"
        return alert, None
    if alert is None:
        return None, None
    if alert.state == "pending":
        alert.dropped = True
        alert.dirty = True
        return None, "dropped"
    alert.clear_count += 1
    alert.last_step = step
    alert.dirty = True
    if alert.clear_count >= resolve_after:
        alert.state = "resolved"
        alert.resolved_step = step
        alert.clear_count = 0
        return None, "resolved"
    return alert, None
