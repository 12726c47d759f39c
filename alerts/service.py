"""The live alert service: each tick evaluates every live run incrementally and notifies.

Per run and tick: load the cursor (how far it was evaluated, the predictors' memory) and the
open alerts, feed the new complete steps through the engine, decide notifications, and store
alerts + cursor + queued deliveries in one transaction; then drain the delivery queue. A
restart resumes from the cursors, so nothing is evaluated or sent twice.

>>> from storage import Database
>>> service = AlertService(Database("sqlite:///tripwire.db"))        # doctest: +SKIP
>>> events = service.tick()                                         # doctest: +SKIP
>>> [(e.kind, e.predictor, e.layer, e.step) for e in events]         # doctest: +SKIP
[('firing', 'sa_collapse', 'blocks.2.attn.proj', 260)]
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timedelta

from alerts import observations
from alerts.config import Config
from alerts.delivery import Outcome, deliver_queued
from alerts.engine import RunEvaluator
from alerts.lifecycle import AlertState
from alerts.notifiers import ConsoleNotifier, Notifier, Route, build_routes
from alerts.notify import Event, plan
from alerts.predictors import INHIBITORS, LIVE_ONLY, PREDICTORS
from storage import alerts as store
from storage import runs
from storage.db import Database
from storage.errors import RunNotFound, StoreUnavailable

log = logging.getLogger("tripwire.alerts")


class AlertService:
    """Evaluates live runs and sends notifications; drive it with :meth:`tick` or :meth:`run_forever`.

    ``notifiers``: a list of notifiers (all alerts go to each) or of :class:`Route`s; default
    from ``config`` and the environment (the console notifier when nothing is configured).
    ``clock`` returns naive UTC now; tests inject their own. ``name`` names the heartbeat row.

    >>> import threading
    >>> service = AlertService(db)                                  # doctest: +SKIP
    >>> stop = threading.Event()
    >>> threading.Thread(target=service.run_forever, args=(2.0, stop), daemon=True).start()  # doctest: +SKIP
    >>> stop.set()                                                   # at the end of training
    """

    def __init__(
        self,
        db: Database,
        config: Config | None = None,
        notifiers: list[Notifier] | list[Route] | None = None,
        clock: Callable[[], datetime] | None = None,
        *,
        name: str = "scheduler",
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.db = db
        self.config = config or Config()
        self.clock = clock or db.now  # the database server's clock, as the trainers' times
        self.name = name
        self.sleep = sleep
        if notifiers is None:
            self.routes = build_routes(self.config)
        else:
            self.routes = [n if isinstance(n, Route) else Route(n) for n in notifiers]
        if not self.routes:
            self.routes = [Route(ConsoleNotifier())]
        self.rules = self.config.enabled_rules()
        self.ticks = 0

    @property
    def notifiers(self) -> dict[str, Notifier]:
        return {r.notifier.name: r.notifier for r in self.routes}

    def tick(self) -> list[Event]:
        """Evaluate all live runs once, then deliver what was queued; returns the events.

        Raises :class:`StoreUnavailable` if the database cannot be reached (the scheduler
        logs it and tries again next tick).
        """
        events = self.evaluate()
        self.deliver()
        return events

    def evaluate(self) -> list[Event]:
        """Evaluate all live runs once and queue their notifications for :meth:`deliver`;
        returns the events. ``tripwire scheduler`` runs the two as separate jobs, so that a
        notifier that hangs delays only the notifications."""
        started = time.perf_counter()
        now = self.clock()
        engine = self.config.engine
        run_ids = store.runs_to_evaluate(
            self.db,
            now=now,
            finished_grace_s=engine.finished_grace_s,
            inhibitors=INHIBITORS,
            live_only=LIVE_ONLY,
        )
        cursors = store.eval_cursors(self.db, run_ids)
        opened = store.open_alerts(self.db, run_ids)
        silenced = {s.run_id for s in store.active_silences(self.db, now)}
        events: list[Event] = []
        failures = 0
        for run_id in run_ids:
            try:
                events += self._evaluate(run_id, cursors.get(run_id), opened[run_id], now, silenced)
            except StoreUnavailable:
                raise
            except RunNotFound:
                continue  # deleted meanwhile
            except Exception:  # one bad run must not stop the others
                failures += 1
                log.exception("evaluating run %s failed", run_id)
        self.ticks += 1
        info = {
            "runs": len(run_ids),
            "events": len(events),
            "errors": failures,
            "tick_s": round(time.perf_counter() - started, 4),
        }
        # Stamped when it ends: a tick longer than an interval (hundreds of runs) is not taken
        # for a stopped scheduler by `tripwire health`.
        store.beat(self.db, self.name, info, at=self.clock())
        return events

    def deliver(self) -> list[Outcome]:
        """Send the queued notifications (also those left by a previous process)."""
        # A delivery left `sending` by a killed process may or may not have gone out: recorded
        # as failed (never sent twice) once it is old enough not to be another scheduler's.
        # Here, not in evaluate(): this process sends nothing else meanwhile.
        store.fail_interrupted(self.db, older_than=self.clock() - timedelta(minutes=5))
        return deliver_queued(
            self.db,
            self.notifiers,
            self.config.retry,
            dashboard_url=self.config.dashboard_url(),
            sleep=self.sleep,
        )

    def _evaluate(
        self,
        run_id: int,
        cursor: store.EvalCursor | None,
        opened: list,
        now: datetime,
        silenced: set[int],
    ) -> list[Event]:
        run = runs.get_run(self.db, run_id)
        start = cursor.last_step if cursor is not None else -1
        memory = copy.deepcopy(cursor.state) if cursor is not None else {}
        rewound_to = memory.get("rewound_to")
        if rewound_to is not None:
            kept = self._replay_kept(run_id, cursor)
            if kept is None:
                return []  # the replay goes on at the next tick
            memory = kept.memory
        evaluator = RunEvaluator(
            run_id,
            self.rules,
            memory,
            [AlertState.from_entity(a) for a in opened],
            resolve_after=self.config.engine.resolve_after,
        )
        if rewound_to is not None:
            evaluator.rewind(rewound_to, kept.open)
        stalled_rule = self.rules.get("stalled")
        stalled_after = stalled_rule.params["after_s"] if stalled_rule else None
        limit = observations.horizon(self.db, run, now=now, stalled_after_s=stalled_after)
        last = start
        if limit is not None and limit > start:
            last = min(limit, start + self.config.engine.max_steps_per_tick)
            for obs in observations.load(self.db, run_id, start, last):
                evaluator.feed(obs)
        at_step = max(last, run.last_step or 0, 0)
        for name, rule in self.rules.items():
            if PREDICTORS[name].wall_time:  # judged on the run now, not on its steps
                for verdict in PREDICTORS[name].fn(run, now, rule.params):
                    evaluator.apply(rule, verdict, at_step)
        touched = evaluator.touched()
        seen = {id(a) for a in touched}
        candidates = touched + [a for a in evaluator.open.values() if id(a) not in seen]
        # told in the order they fired, when a tick catches up on many steps at once
        candidates.sort(key=lambda a: a.fired_step if a.fired_step is not None else a.last_step)
        deliveries, events = plan(
            candidates,
            run_name=run.name,
            project=run.project,
            silenced=run_id in silenced,
            inhibited_from=evaluator.inhibited_from(),
            repeat_every_steps=self.config.engine.repeat_every_steps,
            routes=self.routes,
            changed={id(a) for kind, a in evaluator.transitions if kind in ("firing", "resolved")},
        )
        dirty = [a for a in candidates if a.dirty]
        if cursor is not None and last == start and not dirty and rewound_to is None:
            return events
        writes = [
            store.AlertWrite(a.id, a.row(), delete=a.dropped, notify=deliveries.get(id(a), []))
            for a in dirty
        ]
        ids = store.commit_evaluation(
            self.db,
            run_id,
            expected_step=cursor.last_step if cursor is not None else None,
            last_step=last,
            state=memory,
            writes=writes,
            expected_at=cursor.updated_at if cursor is not None else None,
        )
        if ids is None:
            log.info("run %s was evaluated by another scheduler meanwhile; skipped", run_id)
            return []
        return events

    def _replay_kept(self, run_id: int, cursor: store.EvalCursor) -> RunEvaluator | None:
        """After a resumed run went back to a checkpoint (:func:`storage.runs.rewind`): an
        evaluator fed the steps it kept, up to the cursor, from the database; its memory and
        open alerts are what the live evaluation had there (the engine is pure). It replays
        ``max_steps_per_tick`` steps a tick, going on from the progress an earlier tick stored
        in the cursor; None while that is not done (this tick's progress is stored)."""
        progress = cursor.state.get("replayed") or {"at": -1, "memory": {}, "alerts": []}
        scratch = RunEvaluator(
            run_id,
            self.rules,
            progress["memory"],
            [AlertState(**alert) for alert in progress["alerts"]],
            resolve_after=self.config.engine.resolve_after,
        )
        upto = min(cursor.last_step, progress["at"] + self.config.engine.max_steps_per_tick)
        for obs in observations.load(self.db, run_id, progress["at"], upto):
            scratch.feed(obs)
        if upto == cursor.last_step:
            return scratch
        alerts = [asdict(alert) for alert in scratch.open.values()]
        progress = {"at": upto, "memory": scratch.memory, "alerts": alerts}
        store.commit_evaluation(
            self.db,
            run_id,
            expected_step=cursor.last_step,
            last_step=cursor.last_step,
            # the marker first: store.runs_to_evaluate finds it by the state's first characters
            state={"rewound_to": cursor.state["rewound_to"], "replayed": progress},
            writes=[],
            expected_at=cursor.updated_at,
        )
        return None

    def run_forever(self, interval_s: float, stop: threading.Event) -> None:
        """Evaluate every ``interval_s`` seconds until ``stop`` is set, then once more; a second
        thread sends the notifications on the same interval (a notifier that hangs delays only
        them), and sends what the last evaluation queued before this returns.

        For a background thread (``tripwire demo``, ``tripwire up``); errors are logged, never
        raised. The last evaluation reads the data written just before ``stop`` was set.
        """
        evaluated = threading.Event()  # set once the last evaluation is done
        sender = threading.Thread(
            target=_repeat,
            args=(self.deliver, interval_s, evaluated, "sending notifications failed"),
            name="tripwire-notifications",
        )
        sender.start()
        try:
            _repeat(self.evaluate, interval_s, stop, "alert tick failed")
        finally:
            evaluated.set()
            sender.join()


def _repeat(
    work: Callable[[], object], interval_s: float, stop: threading.Event, failed: str
) -> None:
    """Call ``work`` every ``interval_s`` seconds until ``stop`` is set, then once more; a
    failure is logged as ``failed``, never raised."""
    while True:
        stopping = stop.is_set()
        try:
            work()
        except Exception:
            log.exception(failed)
        if stopping:
            return
        stop.wait(interval_s)
