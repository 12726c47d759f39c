"""The engine: feeds a run's steps, in order, through every enabled predictor and lifecycle.

It is pure (no database, no clock): the live service and the backtest both drive it, which is
why they produce the same alerts for the same data, however the steps are split into ticks.

>>> from alerts.config import Config
>>> from alerts.predictors import Observation
>>> ev = RunEvaluator(run_id=1, rules=Config().enabled_rules(), memory={}, open_alerts=[])
>>> ev.feed(Observation(0, {"loss": float("nan")}))
>>> [(a.predictor, a.state, a.fired_step) for a in ev.touched()]
[('non_finite', 'firing', 0)]
"""

from __future__ import annotations

from collections.abc import Iterable

from alerts.config import Rule
from alerts.lifecycle import AlertState, advance
from alerts.predictors import INHIBITORS, PREDICTORS, Observation, Verdict

DEFAULT_RESOLVE_AFTER = 3
MEMORY_VERSION = 1


class RunEvaluator:
    """Evaluates one run incrementally from its persisted predictor memory and open alerts.

    ``memory`` is the cursor's JSON state and is updated in place; :meth:`touched` returns
    every alert changed since construction (firing, resolved, pending, or dropped ones).
    """

    def __init__(
        self,
        run_id: int,
        rules: dict[str, Rule],
        memory: dict,
        open_alerts: Iterable[AlertState],
        *,
        resolve_after: int = DEFAULT_RESOLVE_AFTER,
    ):
        self.run_id = run_id
        self.rules = rules
        if memory.get("v") != MEMORY_VERSION:
            memory.clear()
            memory.update(v=MEMORY_VERSION, predictors={}, context={})
        self.memory = memory
        self.resolve_after = resolve_after
        self.open: dict[tuple[str, str | None], AlertState] = {
            (a.predictor, a.layer): a for a in open_alerts
        }
        self._touched: list[AlertState] = []
        self._touched_ids: set[int] = set()
        self.transitions: list[tuple[str, AlertState]] = []

    def feed(self, obs: Observation) -> None:
        """Evaluate one step (steps must come in increasing order)."""
        context = self.memory["context"]
        if "loss" in obs.scalars:
            context["loss"] = obs.scalars["loss"]
            context["loss_step"] = obs.step
        for name, rule in self.rules.items():
            spec = PREDICTORS[name]
            if spec.wall_time:
                continue
            memo = self.memory["predictors"].setdefault(name, {})
            for verdict in spec.fn(obs, memo, rule.params):
                self.apply(rule, verdict, obs.step)

    def apply(self, rule: Rule, verdict: Verdict, step: int) -> None:
        """Apply one verdict of ``rule``'s predictor at ``step`` to its fingerprint."""
        key = (rule.name, verdict.layer)
        before = self.open.get(key)
        after, transition = advance(
            before,
            verdict,
            run_id=self.run_id,
            predictor=rule.name,
            severity=rule.severity,
            step=step,
            for_checks=rule.for_checks,
            resolve_after=rule.resolve_after or self.resolve_after,
            context=self._context(),
        )
        alert = after or before
        if alert is not None and alert.dirty:
            self._touch(alert)
        if after is None:
            self.open.pop(key, None)
        else:
            self.open[key] = after
        if transition in ("firing", "resolved") and alert is not None:
            self.transitions.append((transition, alert))

    def rewind(self, step: int, kept: dict[tuple[str, str | None], AlertState]) -> None:
        """Go back to ``step``: the run was resumed from a checkpoint there, and its new attempt
        replaces the steps from ``step`` on. ``kept`` holds the alerts open after the steps
        before it (the :attr:`open` of an evaluator fed only those).

        An open alert that fired (or, pending, began) at ``step`` or later ends: a firing one
        resolves where it was last judged, and is told so, saying why, if its firing was told;
        a pending one is dropped. One that began earlier takes the progress ``kept`` has for it
        (holds and clears counted on the replaced steps no longer count), and an alert open in
        ``kept`` alone is open again.

        >>> from alerts.config import Config
        >>> ev = RunEvaluator(run_id=1, rules=Config().enabled_rules(), memory={}, open_alerts=[])
        >>> ev.feed(Observation(300, {"loss": float("nan")}))
        >>> ev.rewind(200, kept={})
        >>> [(a.predictor, a.state, a.resolved_step) for a in ev.touched()]
        [('non_finite', 'resolved', 300)]
        """
        for key, alert in list(self.open.items()):
            began = alert.fired_step if alert.state == "firing" else alert.first_step
            if began is not None and began >= step:
                self._end(key, alert, step)
            elif key in kept:
                self._take_progress(alert, kept[key])
            elif alert.state == "pending":
                self._end(key, alert, step)
        for key, alert in kept.items():
            if key not in self.open:
                self.open[key] = alert
                alert.dirty = True
                self._touch(alert)
                if alert.state == "firing":
                    self.transitions.append(("firing", alert))

    def _end(self, key: tuple[str, str | None], alert: AlertState, step: int) -> None:
        del self.open[key]
        alert.dirty = True
        self._touch(alert)
        if alert.state == "pending":
            alert.dropped = True
            return
        alert.state = "resolved"
        alert.resolved_step = alert.last_step
        alert.clear_count = 0
        alert.details = {**alert.details, "rewound_to": step}
        self.transitions.append(("resolved", alert))

    def _take_progress(self, alert: AlertState, progress: AlertState) -> None:
        if alert.state == "pending" and progress.state == "firing":
            alert.state, alert.fired_step = "firing", progress.fired_step
            alert.score, alert.message = progress.score, progress.message
            alert.details = dict(progress.details)
            self.transitions.append(("firing", alert))
        alert.hold_count, alert.clear_count = progress.hold_count, progress.clear_count
        alert.last_step = progress.last_step
        if alert.last_notified_step is not None:  # told at a replaced step: repeats count from here
            alert.last_notified_step = min(alert.last_notified_step, alert.last_step)
        alert.dirty = True
        self._touch(alert)

    def _touch(self, alert: AlertState) -> None:
        if id(alert) not in self._touched_ids:
            self._touched_ids.add(id(alert))
            self._touched.append(alert)

    def _context(self) -> dict:
        ctx = self.memory["context"]
        return {k: ctx[k] for k in ("loss", "loss_step") if k in ctx}

    def touched(self) -> list[AlertState]:
        """Alerts changed since construction, in the order they first changed."""
        return list(self._touched)

    def inhibited_from(self) -> int | None:
        """The training step from which the run's weaker alerts stay quiet: where its loss blew
        up (the earliest firing ``non_finite`` or ``loss_exploded`` alert), or None."""
        alerts = (self.open.get((name, None)) for name in INHIBITORS)
        return min((a.fired_step for a in alerts if a and a.state == "firing"), default=None)
