"""What a notification says: one :class:`Message`, rendered as text, HTML and JSON."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

from storage.entities import Alert, Run, run_label

EVENT_TITLES = {
    "firing": "FIRING",
    "repeat": "STILL FIRING",
    "resolved": "RESOLVED",
    "test": "TEST",
}


def dashboard_link(
    base_url: str | None, run: Run, step: int | None, layer: str | None = None
) -> str | None:
    """The dashboard page of ``run`` at ``step`` (and ``layer``), or None without a base URL.

    >>> from datetime import datetime
    >>> run = Run(1, "ab12", "default", "gpt", "running", datetime(2025, 1, 1))
    >>> dashboard_link("http://localhost:8501/", run, 420)
    'http://localhost:8501/run?run=ab12&step=420'
    """
    if not base_url:
        return None
    query = {"run": run.uid}
    if step is not None:
        query["step"] = str(step)
    if layer:
        query["layer"] = layer
    return f"{base_url.rstrip('/')}/run?{urlencode(query, quote_via=quote)}"


@dataclass(frozen=True)
class Message:
    """One notification, whatever the channel.

    >>> m = notify_test_message(None)
    >>> m.subject
    '[tripwire] TEST: notifications work'
    """

    event: str
    severity: str
    subject: str
    text: str
    html: str
    payload: dict = field(default_factory=dict)


def _json_number(value: float | None) -> float | str | None:
    """A number as the JSON payload carries it: NaN and ±Inf, which JSON has no numbers for, as
    ``"nan"``, ``"inf"``, ``"-inf"`` (the command line's JSON does the same); None stays null."""
    return value if value is None or math.isfinite(value) else str(value)


def _fmt(value) -> str:  # noqa: ANN001
    if value is None:
        return "n/a"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def message_step(event: str, alert: Alert) -> int:
    """The training step a message about ``alert``'s ``event`` names: where it resolved for
    ``resolved``, else where it fired.

    >>> from datetime import datetime
    >>> a = Alert(1, 1, "non_finite", None, "1/non_finite/-", "critical", "resolved", 385, 390,
    ...           datetime(2025, 1, 1), datetime(2025, 1, 1), fired_step=385, resolved_step=388)
    >>> message_step("firing", a), message_step("resolved", a)
    (385, 388)
    """
    step = alert.resolved_step if event == "resolved" else alert.fired_step
    return step if step is not None else alert.last_step


def render(event: str, alerts: list[Alert], run: Run, dashboard_url: str | None) -> Message:
    """The message for ``event`` (firing, repeat, resolved) of alerts of one run and predictor
    at one step (:func:`message_step`): several layers that fired together make one message.
    """
    first = alerts[0]
    step = message_step(event, first)
    layers = [a.layer for a in alerts if a.layer]
    loss = (first.details or {}).get("loss")
    link = dashboard_link(dashboard_url, run, step, layers[0] if len(layers) == 1 else None)
    where = ""
    if layers:
        shown = ", ".join(layers[:5]) + (f" (+{len(layers) - 5} more)" if len(layers) > 5 else "")
        where = f" on {shown}"
    title = EVENT_TITLES.get(event, event.upper())
    subject = (
        f"[tripwire] {title} {first.severity}: {first.predictor} on run "
        f"{run_label(run.name, run.project)}"
    )
    # The loss and score are those of the step that fired: say so on a resolved message.
    when = f" (fired at step {first.fired_step})" if event == "resolved" else ""
    loss_label = "loss when it fired" if event == "resolved" else "loss"
    lines = [
        f"{title} {first.severity} {first.predictor}{where}",
        f"run: {run.name} (project {run.project}, uid {run.uid})",
        f"step: {step}{when}   {loss_label}: {_fmt(loss)}   score: {_fmt(first.score)}",
    ]
    details = [a.message for a in alerts[:5] if a.message]
    rewound_to = (first.details or {}).get("rewound_to") if event == "resolved" else None
    if rewound_to is not None:
        details.append(
            f"ended: the run went back to step {rewound_to} (resumed from a checkpoint), and "
            "the steps this alert was about were replaced"
        )
    lines += [f"- {d}" for d in details]
    if link:
        lines.append(f"dashboard: {link}")
    text = "\n".join(lines)
    items = "".join(f"<li>{html.escape(d)}</li>" for d in details)
    anchor = f'<p><a href="{html.escape(link)}">Open the run at step {step}</a></p>' if link else ""
    body = (
        f"<h3>{html.escape(title)} {html.escape(first.severity)}: "
        f"{html.escape(first.predictor)}{html.escape(where)}</h3>"
        f"<p>Run <b>{html.escape(run.name)}</b> (project {html.escape(run.project)}), "
        f"step {step}{html.escape(when)}, {loss_label} {html.escape(_fmt(loss))}, "
        f"score {html.escape(_fmt(first.score))}</p>"
        f"<ul>{items}</ul>{anchor}"
    )
    payload = {
        "event": event,
        "severity": first.severity,
        "predictor": first.predictor,
        "run": run.name,
        "run_uid": run.uid,
        "project": run.project,
        "step": step,
        "fired_step": first.fired_step,
        "layers": layers,
        "loss": _json_number(loss),
        "score": _json_number(first.score),
        "messages": details,
        "alert_ids": [a.id for a in alerts],
        "link": link,
    }
    return Message(event, first.severity, subject, text, body, payload)


def notify_test_message(dashboard_url: str | None) -> Message:
    """The message ``tripwire notify test`` sends."""
    text = "Tripwire test message: this notifier is configured and reachable."
    if dashboard_url:
        text += f"\ndashboard: {dashboard_url}"
    return Message(
        "test",
        "info",
        "[tripwire] TEST: notifications work",
        text,
        f"<p>{html.escape(text)}</p>",
        {"event": "test", "severity": "info", "message": text, "link": dashboard_url},
    )
