"""``stalled``: a run still marked running that stopped reporting (its trainer likely died)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from alerts.predictors.base import Verdict
from storage.entities import Run

PARAMS = {"after_s": 300.0}
"""Seconds without a heartbeat after which a running run counts as stalled."""


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
