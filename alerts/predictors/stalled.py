"""The wall-time rules, judged live by the scheduler and never replayed.

``stalled``: a run still marked running that stopped reporting (its trainer likely died).
``no_progress``: a run whose trainer still reports (its writer thread sends a heartbeat every
15 s) but logs no new step: hung in a collective or the data loader, or busy with something
long, an evaluation or a checkpoint.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from alerts.predictors.base import Verdict
from storage.entities import STALLED_AFTER_S, Run

PARAMS = {"after_s": STALLED_AFTER_S}
"""Seconds without a heartbeat after which a running run counts as stalled."""
MINIMUMS = {
    "after_s": (60.0, "a live trainer reports every 15 s, later while the database is slow")
}
"""Below this a live run would count as stalled between two of its heartbeats, and flap."""

log = logging.getLogger(__name__)


def stalled(run: Run, now: datetime, params: Mapping[str, Any]) -> list[Verdict]:
    """The only predictor of wall-clock time: judged live by the scheduler, never replayed.

    >>> from datetime import timedelta
    >>> t = datetime(2025, 1, 1)
    >>> run = Run(1, "u", "p", "r", "running", started_at=t, heartbeat_at=t)
    >>> stalled(run, t + timedelta(seconds=600), PARAMS)[0].holds
    True
    """
    after = float(params["after_s"])
    holds = run.is_stalled(now, after)
    silent = (now - run.last_seen).total_seconds()
    message = f"no data for {silent:.0f} s (last step {run.last_step})" if holds else ""
    return [Verdict(holds, silent / after if after > 0 else 0.0, message)]


NO_PROGRESS_PARAMS = {"after_s": 1800.0}
"""Seconds without a new step, while the trainer still reports, after which a run is flagged."""


def no_progress(run: Run, now: datetime, params: Mapping[str, Any]) -> list[Verdict]:
    """A running run whose trainer kept reporting for ``after_s`` seconds after it logged its
    newest step. A trainer that died stops reporting: that is ``stalled``. Both times are the
    trainer's clock; ``now``, the scheduler's, is not used (the two clocks may differ).

    >>> from datetime import timedelta
    >>> t = datetime(2025, 1, 1)
    >>> run = Run(1, "u", "p", "r", "running", t, heartbeat_at=t + timedelta(hours=1), logged_at=t)
    >>> no_progress(run, t + timedelta(hours=1), NO_PROGRESS_PARAMS)[0].message
    'no new step for 3600 s (last step None) while the trainer kept reporting: hung, or busy with something long (an evaluation, a checkpoint)'
    """
    after = float(params["after_s"])
    if run.status != "running" or run.logged_at is None:
        return [Verdict(False, 0.0, "")]
    idle = (run.last_seen - run.logged_at).total_seconds()
    holds = idle > after
    message = (
        f"no new step for {idle:.0f} s (last step {run.last_step}) while the trainer kept "
        "reporting: hung, or busy with something long (an evaluation, a checkpoint)"
        if holds
        else ""
    )
    return [Verdict(holds, max(idle, 0.0) / after if after > 0 else 0.0, message)]


def configured_after_s(config_path: str | os.PathLike | None = None) -> float:
    """This rule's ``after_s`` in the configuration in use (``config_path``, else
    ``$TRIPWIRE_CONFIG``, else ``./tripwire.toml``), so that the dashboard and ``tripwire runs``
    call a run stalled when the alert does. The default where there is no configuration, where
    it does not load (logged; the scheduler refuses to start on it) or on an install without the
    alert extras.

    >>> configured_after_s()    # no tripwire.toml here
    300.0
    """
    try:
        from alerts.config import ConfigError, load_config
    except ImportError:  # a trainer-only install: no alert configuration to agree with
        return STALLED_AFTER_S
    try:
        return float(load_config(config_path).rules()["stalled"].params["after_s"])
    except ConfigError as exc:
        log.warning("%s; runs count as stalled after %g s (the default)", exc, STALLED_AFTER_S)
        return STALLED_AFTER_S
