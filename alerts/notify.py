"""Which alert changes are told, and to whom: inhibition, silences, repeats and routing."""

from __future__ import annotations

from dataclasses import dataclass

from alerts.config import SEVERITY_RANK
from alerts.lifecycle import AlertState
from alerts.notifiers import Route
from alerts.predictors import INHIBITORS
from storage.entities import DEFAULT_PROJECT, run_label


@dataclass(frozen=True)
class Event:
    """Something a tick did to an alert, as reported by :meth:`AlertService.tick`.

    ``kind``: firing, repeat or resolved. ``notified``: sent to at least one notifier's
    queue; otherwise ``suppressed`` says why (silenced, inhibited, no route).
    """

    kind: str
    run: str
    run_id: int
    predictor: str
    layer: str | None
    severity: str
    step: int
    message: str
    notified: bool
    suppressed: str | None = None
    project: str = DEFAULT_PROJECT

    @property
    def run_label(self) -> str:
        """The run as one line of text names it (:func:`storage.entities.run_label`)."""
        return run_label(self.run, self.project)


def suppression(
    alert: AlertState, step: int, *, silenced: bool, inhibited_from: int | None
) -> str | None:
    """Why ``alert``'s event at training ``step`` must stay quiet now, or None.

    From the step where a ``non_finite`` or ``loss_exploded`` alert fired, the weaker
    (non-critical) alerts of its run are inhibited: counted in steps, like everything else, so
    a forecast made before the blow-up is told however the scheduler's ticks fall.
    """
    if silenced:
        return "silenced"
    weaker = SEVERITY_RANK.get(alert.severity, 0) < SEVERITY_RANK["critical"]
    blown_up = inhibited_from is not None and step >= inhibited_from
    if blown_up and alert.predictor not in INHIBITORS and weaker:
        return "inhibited"
    return None


def plan(
    alerts: list[AlertState],
    *,
    run_name: str,
    project: str,
    silenced: bool,
    inhibited_from: int | None,
    repeat_every_steps: int,
    routes: list[Route],
    changed: set[int],
) -> tuple[dict[int, list[tuple[str, str]]], list[Event]]:
    """Decide the notifications of one run after a tick.

    Returns (deliveries by ``id(alert)`` as (notifier, event) pairs, events). Marks each
    told alert's ``last_notified_step``: an alert kept quiet while silenced or inhibited is
    told once that ends, if it is still firing; a resolution that comes while its run is
    inhibited is not told (the loss blew up: the forecast did not go away, it came true).
    ``changed`` holds the ``id()`` of the alerts that fired or resolved in this tick: one kept
    quiet is reported as an event then, not again at every tick while it stays quiet.
    """
    deliveries: dict[int, list[tuple[str, str]]] = {}
    events: list[Event] = []
    for alert in alerts:
        if alert.dropped or alert.state == "pending":
            continue
        kinds: list[str] = []
        if alert.state == "firing":
            if alert.last_notified_step is None:
                kinds = ["firing"]
            elif alert.last_step - alert.last_notified_step >= repeat_every_steps:
                kinds = ["repeat"]
        elif alert.state == "resolved":
            if alert.last_notified_step is not None:
                kinds = ["resolved"]  # held back too while silenced or inhibited
            elif alert.fired_step is not None and "rewound_to" not in alert.details:
                kinds = ["firing", "resolved"]  # not one never told that a resume ended
        told = False
        for kind in kinds:
            step = alert.resolved_step if kind == "resolved" else alert.fired_step
            step = step if step is not None else alert.last_step
            when = alert.last_step if kind == "repeat" else step
            why = suppression(alert, when, silenced=silenced, inhibited_from=inhibited_from)
            targets = [] if why else [r for r in routes if r.accepts(alert.severity, project)]
            if not why and not targets:
                why = "no notifier accepts it"
            if not why:
                deliveries.setdefault(id(alert), []).extend(
                    (r.notifier.name, kind) for r in targets
                )
            told = told or why is None or why == "no notifier accepts it"
            if not told and id(alert) not in changed:
                continue  # kept quiet since an earlier tick: no news
            events.append(
                Event(
                    kind,
                    run_name,
                    alert.run_id,
                    alert.predictor,
                    alert.layer,
                    alert.severity,
                    step,
                    alert.message or "",
                    notified=not why,
                    suppressed=why,
                    project=project,
                )
            )
        if told:
            alert.last_notified_step = alert.last_step
            alert.dirty = True
    return deliveries, events
