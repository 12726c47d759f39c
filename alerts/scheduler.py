"""``tripwire scheduler``: the alert service on two APScheduler 3 interval jobs.

One job evaluates all live runs per tick and queues their notifications, the other sends the
queue: a notifier that hangs (each message held ``max_attempts`` × ``timeout_s``) delays the
notifications, not the evaluation. For each, ``coalesce`` folds missed ticks into one,
``max_instances=1`` never lets two ticks overlap, and a tick later than the misfire grace time
is skipped rather than run late.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from alerts.service import AlertService
from alerts.watchdog import HeartbeatPing

log = logging.getLogger("tripwire.alerts")


def _import_apscheduler():
    try:
        from apscheduler.schedulers.background import BackgroundScheduler
        from apscheduler.schedulers.blocking import BlockingScheduler
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "the scheduler needs APScheduler: pip install 'tripwire[alerts]'"
        ) from exc
    return BlockingScheduler, BackgroundScheduler


def safe_evaluate(service: AlertService, ping: HeartbeatPing | None = None) -> None:
    """One evaluation that logs instead of raising (the database may be down for a while);
    ``ping`` is told when it went through (:mod:`alerts.watchdog`)."""
    try:
        events = service.evaluate()
    except Exception as exc:
        log.error("alert tick failed: %s", exc)
        return
    for event in events:
        log.info("%s %s %s step %s", event.kind, event.predictor, event.run_label, event.step)
    if ping is not None:
        ping.ping()


def safe_deliver(service: AlertService) -> None:
    """Send the queued notifications; logs instead of raising."""
    try:
        service.deliver()
    except Exception as exc:
        log.error("sending notifications failed: %s", exc)


def build_scheduler(
    service: AlertService,
    *,
    interval_s: float | None = None,
    misfire_grace_s: float | None = None,
    blocking: bool = True,
    ping: HeartbeatPing | None = None,
):
    """An APScheduler scheduler running ``service.evaluate`` and ``service.deliver`` every
    ``interval_s`` seconds, each on its own; ``ping`` is requested after each evaluation that
    went through (a dead man's switch, :mod:`alerts.watchdog`).

    A blocking one's ``start()`` returns only when stopped (Ctrl-C). Tripwire logs one INFO
    line per alert event (``tripwire.alerts``); APScheduler's own loggers are quieted to
    WARNING unless a level was set for them.

    >>> scheduler = build_scheduler(AlertService(db), interval_s=10)     # doctest: +SKIP
    >>> scheduler.start()  # doctest: +SKIP
    """
    blocking_cls, background_cls = _import_apscheduler()
    # APScheduler logs two INFO lines per tick ("Running job", "executed successfully"): 17k a
    # day at 10 s. Its warnings (missed ticks) still show; a level set by the user is kept.
    aps_log = logging.getLogger("apscheduler")  # parent of apscheduler.executors.default etc.
    if aps_log.level == logging.NOTSET:
        aps_log.setLevel(logging.WARNING)
    engine = service.config.engine
    interval = interval_s or engine.interval_s
    scheduler = (blocking_cls if blocking else background_cls)(timezone=timezone.utc)
    jobs = (
        (safe_evaluate, [service, ping], "tripwire-alerts", "evaluate live runs"),
        (safe_deliver, [service], "tripwire-notifications", "send notifications"),
    )
    for job, args, job_id, name in jobs:
        scheduler.add_job(
            job,
            "interval",
            args=args,
            seconds=interval,
            id=job_id,
            name=name,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=max(1, int(misfire_grace_s or engine.misfire_grace_s)),
            next_run_time=datetime.now(timezone.utc),
            replace_existing=True,
        )
    return scheduler
