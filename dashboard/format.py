"""Plain formatting for the pages (no Streamlit): durations, statuses, health badges.

>>> duration(3725)
'1h 02m'
>>> health_badge({"critical": 1, "warning": 2, "info": 0, "pending": 0})
'1 critical · 2 warning'
>>> most_severe({"critical": 0, "warning": 2, "info": 17, "pending": 0})
'2 warning'
>>> alerts_tile({"status": "finished", "critical": 1, "warning": 0, "info": 3, "pending": 0})[:2]
('alerts at end', '1 critical')
>>> alerts_cell({"status": "finished", "critical": 1, "warning": 0, "info": 3, "pending": 0})
'1 critical · 3 info (at end)'
"""

from __future__ import annotations

import math


def duration(seconds: float | None) -> str:
    """``1h 02m``, ``4m 05s``, ``12s``; empty for None."""
    if seconds is None:
        return ""
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def health_badge(row: dict) -> str:
    """Open alerts by severity, most severe first; ``ok`` when there are none."""
    parts = [
        f"{row.get(key, 0)} {key}"
        for key in ("critical", "warning", "info", "pending")
        if row.get(key, 0)
    ]
    return " · ".join(parts) if parts else "ok"


def most_severe(row: dict) -> str:
    """The first part of :func:`health_badge`: short enough for a metric tile."""
    return health_badge(row).split(" · ")[0]


def alerts_tile(row: dict) -> tuple[str, str, str]:
    """The run page's alerts tile as (label, value, tooltip).

    A live run's alerts are *open*: someone may act on them. An ended run's firing alerts stay
    firing (nothing resolves them once the data stops), so they tell how the run ended, and the
    tile says so instead of asking for action.
    """
    badge = health_badge(row)
    if row.get("status") in ("finished", "failed"):
        note = "still firing when the run ended; no resolution is sent for them"
        return "alerts at end", most_severe(row), f"{badge}: {note}" if badge != "ok" else badge
    return "open alerts", most_severe(row), badge


def alerts_cell(row: dict) -> str:
    """The runs table's alerts cell: :func:`health_badge`, marked ``(at end)`` for an ended run,
    whose firing alerts tell how it ended rather than ask for action (see :func:`alerts_tile`)."""
    badge = health_badge(row)
    if badge != "ok" and row.get("status") in ("finished", "failed"):
        return f"{badge} (at end)"
    return badge


def number(value: float | None, digits: int = 4) -> str:
    """A number for display; NaN and ±Inf spelled out, None empty."""
    if value is None:
        return ""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return f"{value:.{digits}g}"
