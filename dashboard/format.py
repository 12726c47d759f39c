"""Plain formatting for the pages (no Streamlit): durations, statuses, health badges, run
labels, and user text made literal for Markdown.

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
>>> md("blocks.0", code=True)
'`blocks.0`'
"""

from __future__ import annotations

import math
import re
import string

_PUNCTUATION = frozenset(string.punctuation)
_AUTOLINK = re.compile(r"(?i)(?<=https)(?=:)|(?<=http)(?=:)|(?<=www)(?=\.)|(?=@)")


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


def count(n: int, noun: str) -> str:
    """``n`` things, in the singular for one.

    >>> count(1, "run"), count(3, "alert")
    ('1 run', '3 alerts')
    """
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def number(value: float | None, digits: int = 4) -> str:
    """A number for display; NaN and ±Inf spelled out, None empty."""
    if value is None:
        return ""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return f"{value:.{digits}g}"


def md(text: object, *, code: bool = False) -> str:
    r"""``text`` (a run name, a reason, an error, a URL parameter) for a Streamlit element that
    renders Markdown (``st.title``, ``st.caption``, ``st.warning``, ``st.write`` ...), so that it
    shows literally: no bold, links, LaTeX, ``:emoji:`` or ``:red[...]``. Streamlit already
    escapes HTML; it has no escape of its own for Markdown.

    Every ASCII punctuation character gets a backslash (CommonMark unescapes them all). A bare
    URL or address (``http://``, ``www.``, ``@``) would still become a link, since the GFM
    autolinker reads the unescaped text: an invisible word joiner (U+2060) breaks it.
    ``code=True`` gives a code span instead, whose content Markdown leaves alone: its fence is
    longer than any run of backticks inside.

    >>> print(md("**bold** [link](x) $x$ :rocket:"))
    \*\*bold\*\* \[link\]\(x\) \$x\$ \:rocket\:
    """
    text = str(text)
    if code:
        fence = "`" * (max(map(len, re.findall("`+", text)), default=0) + 1)
        pad = " " if text[:1] == "`" or text[-1:] == "`" or not text.strip() else ""
        return f"{fence}{pad}{text}{pad}{fence}"
    text = _AUTOLINK.sub("\u2060", text)
    return "".join("\\" + c if c in _PUNCTUATION else c for c in text)


def run_label(run: dict) -> str:
    """A run for a picker: name, project, status, start and the uid's first characters, so that
    runs of one name (a resumed run, a second ``trainer.train()``) can be told apart.

    >>> from datetime import datetime
    >>> run_label({"name": "gpt", "project": "p", "status": "finished", "uid": "59d7143e09",
    ...            "started_at": datetime(2026, 11, 30, 16, 50, 40)})
    'gpt · p · finished · 2026-11-30 16:50 · 59d714'
    """
    parts = [run["name"], run.get("project"), run.get("status")]
    if run.get("started_at") is not None:
        parts.append(f"{run['started_at']:%Y-%m-%d %H:%M}")
    parts.append(run["uid"][:6])
    return " · ".join(str(p) for p in parts if p)
