"""Who watches the watcher: is the alert scheduler ticking?

A scheduler that died (out of memory, a crash loop, a database password rotated) sends no
alert at all, and silence reads as "all is well". Two ways to be told, as Prometheus users get
from Alertmanager's Watchdog alert and a dead man's switch:

- **push**: with ``TRIPWIRE_HEARTBEAT_URL`` set, the scheduler requests that URL after each
  evaluation that went through (at most once a minute). A dead man's switch service
  (Healthchecks.io, Dead Man's Snitch, Uptime Kuma's push monitor, Better Stack heartbeats)
  pages you when the requests stop;
- **pull**: ``tripwire health`` exits 1 when the scheduler's last tick is older than
  ``--max-age``: a Docker or Kubernetes health check, or a cron job that mails its output.

>>> ping = HeartbeatPing.from_env()  # None unless TRIPWIRE_HEARTBEAT_URL is set  # doctest: +SKIP
>>> scheduler_health(db, max_age_s=30)  # doctest: +SKIP
(True, 'scheduler: last tick 4 s ago (3 runs, 0 errors)')
"""

from __future__ import annotations

import logging
import os
import time
import urllib.request
from collections.abc import Callable

from alerts.notifiers.base import NotifyError, check_url, http_status_error, network_error, redact
from storage import Database
from storage import alerts as store

log = logging.getLogger("tripwire.alerts")

ENV_HEARTBEAT_URL = "TRIPWIRE_HEARTBEAT_URL"
SCHEDULER = "scheduler"
"""The name the scheduler's ticks are recorded under (``service_heartbeats``)."""


class HeartbeatPing:
    """Requests ``url`` (GET) after a good tick, at most every ``every_s`` seconds; a failed
    request is logged, never raised (the scheduler goes on). The URL is never shown.

    >>> HeartbeatPing("https://hc-ping.com/0f6e-secret-uuid")
    HeartbeatPing(https://hc-ping.com/…)
    """

    def __init__(
        self,
        url: str,
        *,
        every_s: float = 60.0,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.url = check_url(url, ENV_HEARTBEAT_URL)
        self.every_s = every_s
        self.timeout_s = timeout_s
        self.clock = clock
        self.sent = 0
        self.failed = 0
        self._last: float | None = None

    @classmethod
    def from_env(cls) -> HeartbeatPing | None:
        """From ``TRIPWIRE_HEARTBEAT_URL``; None when it is not set (ValueError when invalid)."""
        url = os.environ.get(ENV_HEARTBEAT_URL, "").strip()
        return cls(url) if url else None

    def __repr__(self) -> str:
        return f"HeartbeatPing({redact(self.url)})"

    def ping(self) -> bool:
        """Request the URL if ``every_s`` passed since the last request; True if it answered 2xx."""
        now = self.clock()
        if self._last is not None and now - self._last < self.every_s:
            return False
        self._last = now
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout_s) as response:
                response.read(1024)
        except Exception as exc:  # HTTPError (4xx/5xx) and network errors alike
            self.failed += 1
            status = getattr(exc, "code", None)
            error: NotifyError = (
                http_status_error(status, f"heartbeat {redact(self.url)}")
                if isinstance(status, int)
                else network_error(f"heartbeat {redact(self.url)}", exc)
            )
            log.warning("%s (the dead man's switch will page if this goes on)", error)
            return False
        self.sent += 1
        return True


def scheduler_health(db: Database, max_age_s: float) -> tuple[bool, str]:
    """Whether the scheduler ticked within ``max_age_s`` seconds, and a line that says so."""
    found = store.last_beat(db, SCHEDULER)
    if found is None:
        return False, "scheduler: never ticked against this database"
    seen, info = found
    age = (db.now() - seen).total_seconds()
    detail = f"{info.get('runs', '?')} runs, {info.get('errors', '?')} errors"
    if age > max_age_s:
        return False, f"scheduler: last tick {age:.0f} s ago, over {max_age_s:g} s ({detail})"
    return True, f"scheduler: last tick {age:.0f} s ago ({detail})"
