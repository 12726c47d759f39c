"""Plain formatting for the pages (no Streamlit): durations, statuses, health badges.

>>> duration(3725)
'1h 02m'
>>> health_badge({"critical": 1, "warning": 2, "info": 0, "pending": 0})
'1 critical · 2 warning'
>>> most_severe({"critical": 0, "warning": 2, "info": 17, "pending": 0})
'2 warning'
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


def number(value: float | None, digits: int = 4) -> str:
    """A number for display; NaN and ±Inf spelled out, None empty."""
    if value is None:
        return ""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return f"{value:.{digits}g}"
