"""Sending with retries (tenacity), and draining the delivery queue into the notifiers.

Notifications are queued in the same transaction that records the alert change (an outbox),
then sent here; every outcome is recorded (sent / failed, attempts, error). A notifier outage
costs a few retries and a ``failed`` record, never the scheduler.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from tenacity import RetryError, Retrying, retry_if_exception, stop_after_attempt

from alerts.config import RetrySettings
from alerts.message import Message, message_step, render
from alerts.notifiers.base import Notifier, NotifyError
from storage import alerts as store
from storage import runs
from storage.db import Database
from storage.entities import Alert, Notification

log = logging.getLogger("tripwire.alerts")


@dataclass(frozen=True)
class Outcome:
    """How one delivery went."""

    notifier: str
    event: str
    status: str  # sent | failed
    attempts: int
    error: str | None = None


def _is_recoverable(exc: BaseException) -> bool:
    return isinstance(exc, NotifyError) and exc.recoverable


def _waiter(retry: RetrySettings) -> Callable:
    def wait(state) -> float:  # noqa: ANN001
        backoff = retry.initial_backoff_s * 2 ** (state.attempt_number - 1)
        exc = state.outcome.exception() if state.outcome else None
        hinted = getattr(exc, "retry_after", None)
        if hinted is not None:
            backoff = max(backoff, hinted)
        return min(backoff, retry.max_backoff_s)

    return wait


def send_with_retry(
    notifier: Notifier,
    message: Message,
    retry: RetrySettings,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[int, NotifyError | None]:
    """Send, retrying recoverable failures with exponential backoff; returns (attempts, error).

    >>> from alerts.notifiers import ConsoleNotifier
    >>> from alerts.message import notify_test_message
    >>> import io
    >>> send_with_retry(ConsoleNotifier(stream=io.StringIO()), notify_test_message(None), RetrySettings())
    (1, None)
    """
    attempts = 0

    def attempt() -> None:
        nonlocal attempts
        attempts += 1
        notifier.send(message)

    retrying = Retrying(
        stop=stop_after_attempt(retry.max_attempts if notifier.retries else 1),
        wait=_waiter(retry),
        retry=retry_if_exception(_is_recoverable),
        sleep=sleep,
        reraise=True,
    )
    try:
        retrying(attempt)
    except NotifyError as exc:
        return attempts, exc
    except RetryError as exc:  # pragma: no cover - reraise=True makes this unreachable
        return attempts, NotifyError(str(exc), recoverable=True)
    except Exception as exc:  # a notifier bug must not stop the scheduler
        return attempts, NotifyError(f"{type(exc).__name__}: {exc}", recoverable=False)
    return attempts, None


def deliver_queued(
    db: Database,
    notifiers: dict[str, Notifier],
    retry: RetrySettings,
    *,
    dashboard_url: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Outcome]:
    """Send every queued notification; alerts of one run, predictor and event at one step (the
    layers that fired together) share a message, and a run's messages go out in step order.

    Each message's deliveries are claimed just before it is sent, so a process killed here
    leaves the others queued for the next one.

    >>> from alerts.notifiers import ConsoleNotifier
    >>> deliver_queued(db, {"log": ConsoleNotifier()}, RetrySettings())   # doctest: +SKIP
    [Outcome(notifier='log', event='firing', status='sent', attempts=1, error=None)]
    """
    queued = store.queued_deliveries(db)
    first_of_run: dict[int, int] = {}
    for note, alert in queued:
        first_of_run.setdefault(alert.run_id, note.id)
    # A tick that catches up queues an alert's firing and resolution together: a resolution at
    # step 388 must go out before another alert's firing at 390, and never inside its message.
    queued.sort(key=lambda q: (first_of_run[q[1].run_id], message_step(q[0].event, q[1]), q[0].id))
    groups: dict[tuple, list[tuple[Notification, Alert]]] = {}
    for note, alert in queued:
        step = message_step(note.event, alert)
        key = (note.notifier, alert.run_id, alert.predictor, note.event, step)
        groups.setdefault(key, []).append((note, alert))
    outcomes = []
    run_cache: dict = {}
    for (name, run_id, _predictor, event, _step), group in groups.items():
        ids = store.claim(db, [note.id for note, _ in group])
        alerts = {alert.id: alert for note, alert in group if note.id in ids}  # once per alert
        if not alerts:
            continue  # another scheduler took them
        notifier = notifiers.get(name)
        if notifier is None:
            error = f"notifier {name!r} is no longer configured"
            store.finish_delivery(db, ids, status="failed", attempts=0, error=error)
            outcomes.append(Outcome(name, event, "failed", 0, error))
            continue
        if run_id not in run_cache:
            run_cache[run_id] = runs.get_run(db, run_id)
        message = render(event, list(alerts.values()), run_cache[run_id], dashboard_url)
        attempts, error = send_with_retry(notifier, message, retry, sleep=sleep)
        status = "sent" if error is None else "failed"
        text = None if error is None else str(error)
        if error is not None:
            log.warning("delivery to %s failed after %d attempt(s): %s", name, attempts, text)
        store.finish_delivery(db, ids, status=status, attempts=attempts, error=text)
        outcomes.append(Outcome(name, event, status, attempts, text))
    return outcomes
