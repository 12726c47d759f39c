"""Figure builders: pure functions from query results to Plotly figures. No Streamlit here.

Non-finite values are evidence, not noise: every builder shows NaN and ±Inf as red ``x``
markers (Plotly itself would silently leave a gap).

Plotly reads its text (names, ticks, titles, hover) as HTML of its own, links included: every
name a user or a trainer chose goes through :func:`_plain` first, and never into a
``hovertemplate``, where ``%{...}`` would be substituted.

>>> from dashboard import figures
>>> fig = figures.scalars_figure(df, alerts=run_alerts)     # doctest: +SKIP
>>> fig.show()
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

SEVERITY_COLORS = {"critical": "#d62728", "warning": "#ff7f0e", "info": "#1f77b4"}
NONFINITE_COLOR = "#d62728"
SCALAR_TITLES = {
    "loss": "loss",
    "lr": "learning rate",
    "grad_norm": "gradient norm",
    "weight_norm": "weight norm",
    "attn_logit_max": "largest attention logit",
    "log_z": "output log Z",
    "tripwire_check_ms": "Tripwire's check (ms of the training thread)",
}
SIGNAL_SCALARS = ("attn_logit_max", "log_z")
"""User scalars the predictors read: shown on the run page by default when a run logs them."""
STAT_TITLES = {
    "sa_imbalance": "SA imbalance D = |2p+ − 1|",
    "sa_pos": "SA p+",
    "grad_norm": "gradient norm",
    "weight_norm": "weight norm",
    "sigma1": "σ1",
    "stable_rank": "stable rank",
    "v_drift": "v1 drift",
    "sa_mean": "mean SA",
    "sa_abs_mean": "mean |SA|",
    "act_max": "max |x|",
    "act_norm_mean": "mean ||x||",
    "sa_c_abs_mean": "mean |SA|, centred inputs",
    "sa_c_imbalance": "SA imbalance D, centred inputs",
    "update_ratio": "update / weight per step",
}
LOG_COLOR_STATS = ("grad_norm", "weight_norm", "sigma1", "act_max", "act_norm_mean", "update_ratio")
"""Statistics whose heatmaps are coloured by log10: they span decades across layers."""
NO_LAYER_STATS = "no layer statistics: the run recorded none (no monitored layers?)"
"""What an ended run's empty layer charts say (a model with no layer Tripwire monitors)."""


def colorscale(name: str) -> list[list]:
    """A named Plotly colour scale as explicit stops, safe to hand to Streamlit.

    Streamlit's front end rewrites the colours ``#000001``..``#000010`` (placeholders of its
    own theme) into its palette, so Inferno's and Magma's black ``#000004`` would show as
    lilac. Such stops are nudged to ``#010105``.
    """
    import plotly.colors

    stops = plotly.colors.get_colorscale(name)
    return [[pos, "#010105" if _is_placeholder(color) else color] for pos, color in stops]


def _is_placeholder(color: str) -> bool:
    color = color.lower()
    return len(color) == 7 and color.startswith("#0000") and 1 <= int(color[1:], 16) <= 16


def _finite(value) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def _plain(text) -> str:
    """A run, layer or scalar name, or a message, shown literally by Plotly (no ``<a href>``)."""
    return html.escape(str(text), quote=False)  # Plotly decodes &lt; &gt; &amp;, not &quot;


def _label(value) -> str:
    if value is None:
        return "missing"
    return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")


def _base_layout(fig: go.Figure, title: str | None, height: int) -> go.Figure:
    fig.update_layout(
        title=title,
        height=height,
        margin={"l": 60, "r": 20, "t": 50 if title else 20, "b": 40},
        hovermode="closest",
        legend={"orientation": "h", "y": -0.12},
        uirevision="keep",  # live refreshes keep the user's zoom and hidden traces
    )
    return fig


def empty_figure(message: str, height: int = 250) -> go.Figure:
    """A blank figure carrying a message (no data yet, nothing selected)."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _base_layout(fig, None, height)


# -- per-step scalars ----------------------------------------------------------------------------


def scalars_figure(
    df,
    *,
    keys: Sequence[str] = ("loss", "lr", "grad_norm"),
    alerts: Iterable = (),
    mark_step: int | None = None,
    log_y: Sequence[str] | None = None,
    alerts_run: str | None = None,
    ended: bool = False,
    height_per_row: int = 210,
) -> go.Figure:
    """Stacked line charts of a run's scalars sharing one step axis, with alert markers.

    ``df`` has columns ``step``, ``key``, ``value`` and optionally ``run`` (several runs are
    overlaid, one colour per run). ``alerts`` are objects with ``predictor``, ``layer``,
    ``severity``, ``state``, ``first_step``, ``fired_step`` and ``message``: each is a marker
    on the first chart at the step it fired (hover shows it) and a dotted line across all.
    They belong to one run, whose curve the markers sit on: the rows whose ``run`` is
    ``alerts_run`` (by default the first run in ``df``).
    ``log_y`` names the keys drawn on a log axis; by default those whose positive values span
    more than two decades (an exploded loss would flatten everything before it). A chart with
    no values says so: none yet, or, once the run has ``ended``, that it logged none.

    >>> scalars_figure(series.scalar_frame(db, run.id), alerts=list_alerts(db, run_id=run.id))  # doctest: +SKIP
    """
    keys = list(keys)
    fig = make_subplots(
        rows=len(keys),
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.04,
        subplot_titles=[_plain(SCALAR_TITLES.get(k, k)) for k in keys],
    )
    runs = list(dict.fromkeys(df["run"])) if "run" in df.columns and len(df) else [None]
    palette = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
    for row, key in enumerate(keys, start=1):
        part = df[df["key"] == key] if len(df) else df
        finite_values = [v for v in part["value"] if _finite(v)] if len(part) else []
        top = max(finite_values) if finite_values else 0.0
        for i, run in enumerate(runs):
            sub = part if run is None else part[part["run"] == run]
            ok = sub[sub["value"].map(_finite)] if len(sub) else sub
            name = run or key
            fig.add_trace(
                go.Scatter(
                    x=ok["step"].tolist() if len(ok) else [],
                    y=ok["value"].tolist() if len(ok) else [],
                    mode="lines",
                    name=_plain(name),
                    legendgroup=str(name),
                    showlegend=row == 1 and run is not None,
                    line={"color": palette[i % len(palette)], "width": 1.5},
                    meta=_plain(key),
                    hovertemplate="%{fullData.name}<br>step %{x}<br>%{meta} %{y:.4g}<extra></extra>",
                ),
                row=row,
                col=1,
            )
            bad = sub[~sub["value"].map(_finite)] if len(sub) else sub
            if len(bad):
                fig.add_trace(
                    go.Scatter(
                        x=bad["step"].tolist(),
                        y=[top] * len(bad),
                        mode="markers",
                        name="non-finite",
                        showlegend=False,
                        marker={"symbol": "x", "size": 9, "color": NONFINITE_COLOR},
                        text=[_plain(f"{name}: {key} = {_label(v)}") for v in bad["value"]],
                        hovertemplate="step %{x}<br>%{text}<extra></extra>",
                    ),
                    row=row,
                    col=1,
                )
        log = (key in log_y) if log_y is not None else _spans_decades(finite_values)
        if log:
            fig.update_yaxes(type="log", row=row, col=1)
        elif finite_values and min(finite_values) == max(finite_values):
            # Plotly pads a constant series by ±1 (a constant lr of 3e-3 sat on a −1..1 axis).
            pad = abs(finite_values[0]) or 1.0
            fig.update_yaxes(range=[finite_values[0] - pad, finite_values[0] + pad], row=row, col=1)
        if not len(part):
            fig.add_annotation(
                text=_no_values(key, ended),
                showarrow=False,
                x=0.5,
                y=0.5,
                xref="x domain",
                yref="y domain",
                row=row,
                col=1,
            )
            fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, row=row, col=1)
    if alerts_run is None:
        alerts_run = runs[0]
    _add_alert_markers(fig, df, keys[0] if keys else None, alerts, alerts_run)
    if mark_step is not None:
        fig.add_vline(x=mark_step, line_color="#444", line_width=1, row="all", col=1)
    fig.update_xaxes(title_text="step", row=len(keys), col=1)
    return _base_layout(fig, None, height_per_row * len(keys) + 60)


def _no_values(key: str, ended: bool) -> str:
    title = _plain(SCALAR_TITLES.get(key, key))
    if not ended:
        return f"no {title} yet"
    if key == "grad_norm":  # Tripwire's own: the norm over the layers it monitors
        return f"no {title}: it is measured over the monitored layers, and the run recorded none"
    return f"no {title}: the run logged none"


def _spans_decades(values: list[float], decades: float = 2.0) -> bool:
    if not values or min(values) <= 0:
        return False
    return math.log10(max(values) / min(values)) > decades


def _alert_step(alert) -> int | None:
    fired = getattr(alert, "fired_step", None)
    return fired if fired is not None else getattr(alert, "first_step", None)


def _add_alert_markers(
    fig: go.Figure, df, key: str | None, alerts: Iterable, run: str | None
) -> None:
    alerts = [a for a in alerts if _alert_step(a) is not None]
    if not alerts or key is None:
        return
    part = df[(df["key"] == key) & df["value"].map(_finite)] if len(df) else df
    if run is not None and "run" in part.columns:  # on their own run's curve, not an overlay's
        part = part[part["run"] == run]
    part = part.sort_values("step", kind="stable") if len(part) else part
    steps = part["step"].tolist() if len(part) else []
    values = part["value"].tolist() if len(part) else []
    by_severity: dict[str, list] = {}
    for alert in alerts:
        by_severity.setdefault(getattr(alert, "severity", "info"), []).append(alert)
    for severity, group in by_severity.items():
        color = SEVERITY_COLORS.get(severity, "#7f7f7f")
        xs, ys, texts = [], [], []
        for alert in group:
            step = _alert_step(alert)
            xs.append(step)
            ys.append(_value_near(steps, values, step))
            layer = getattr(alert, "layer", None)
            texts.append(
                f"<b>{_plain(getattr(alert, 'predictor', '?'))}</b>"
                f" ({severity}, {getattr(alert, 'state', '')})"
                + (f"<br>layer {_plain(layer)}" if layer else "")
                + f"<br>{_plain((getattr(alert, 'message', '') or '')[:200])}"
            )
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="markers",
                name=f"{severity} alert",
                marker={
                    "symbol": "triangle-down",
                    "size": 13,
                    "color": color,
                    "line": {"width": 1, "color": "white"},
                },
                text=texts,
                hovertemplate="step %{x}<br>%{text}<extra></extra>",
            ),
            row=1,
            col=1,
        )
        for step in sorted(set(xs))[:50]:
            fig.add_vline(x=step, line_dash="dot", line_color=color, line_width=1, row="all", col=1)


def _value_near(steps: list[int], values: list[float], step: int) -> float | None:
    if not steps:
        return None
    import bisect

    i = bisect.bisect_right(steps, step) - 1
    return values[max(i, 0)]


# -- layer × step ----------------------------------------------------------------------------


def layer_heatmap(
    matrix,
    *,
    title: str | None = None,
    scale: str = "Viridis",
    zmin: float | None = None,
    zmax: float | None = None,
    log: bool | None = None,
    mark_step: int | None = None,
    ended: bool = False,
    height: int | None = None,
) -> go.Figure:
    """A layer × step heatmap of one statistic (a :class:`storage.series.LayerMatrix`).

    Layers run top to bottom in model order; non-finite cells are red ``x`` markers. Norm-like
    statistics are coloured by log10 unless ``log=False``. An empty matrix says there are no
    statistics yet, or, once the run has ``ended``, that it recorded none.

    >>> layer_heatmap(series.layer_matrix(db, run.id, "sa_imbalance"), zmin=0, zmax=1)  # doctest: +SKIP
    """
    stat = getattr(matrix, "stat", "")
    title = title or STAT_TITLES.get(stat, stat)
    if not matrix.layers or not matrix.steps:
        return empty_figure(f"{title}: {NO_LAYER_STATS if ended else 'no layer statistics yet'}")
    log = stat in LOG_COLOR_STATS if log is None else log
    z, bad_x, bad_y, bad_text = [], [], [], []
    for name, row in zip(matrix.layers, matrix.z, strict=True):
        out = []
        for step, value in zip(matrix.steps, row, strict=True):
            if value is None:
                out.append(None)
            elif not math.isfinite(value):
                out.append(None)
                bad_x.append(step)
                bad_y.append(_plain(name))
                bad_text.append(_label(value))
            elif log:
                out.append(math.log10(value) if value > 0 else None)
            else:
                out.append(value)
        z.append(out)
    fig = go.Figure(
        go.Heatmap(
            x=matrix.steps,
            y=[_plain(name) for name in matrix.layers],
            z=z,
            colorscale=colorscale(scale),
            zmin=zmin,
            zmax=zmax,
            colorbar={"title": "log10" if log else "", "thickness": 12},
            hovertemplate="step %{x}<br>%{y}<br>"
            + ("log10 " if log else "")
            + f"{stat} %{{z:.3g}}<extra></extra>",
            hoverongaps=False,
        )
    )
    if bad_x:
        fig.add_trace(
            go.Scatter(
                x=bad_x,
                y=bad_y,
                mode="markers",
                name="non-finite",
                marker={"symbol": "x", "size": 7, "color": NONFINITE_COLOR},
                text=bad_text,
                hovertemplate="step %{x}<br>%{y}<br>%{text}<extra></extra>",
            )
        )
    if mark_step is not None:
        fig.add_vline(x=mark_step, line_color="white", line_width=1)
    fig.update_yaxes(autorange="reversed", type="category", automargin=True)
    fig.update_xaxes(title_text="step")
    rows = len(matrix.layers)
    return _base_layout(fig, title, height or min(900, max(260, 40 + 14 * rows)))


def sa_hist_figure(hist, *, mark_step: int | None = None, height: int = 360) -> go.Figure:
    """A layer's SA distribution over time (step × bin heatmap of fractions) with the p+ line.

    ``hist`` is a :class:`storage.series.HistSeries`. A collapse shows as the mass folding
    into the bins on one side of zero while p+ runs to 0 or 1.

    >>> sa_hist_figure(series.sa_hist_series(db, run.id, "blocks.0.attn.qkv"))  # doctest: +SKIP
    """
    title = f"SA distribution of {_plain(hist.layer)}"
    rows = [c for c in hist.counts if c]
    if not rows:
        return empty_figure(f"{title}: no histograms yet")
    bins = max(len(c) for c in rows)
    edges = list(hist.bin_edges) if len(hist.bin_edges) == bins + 1 else None
    edges = edges or [-1 + 2 * i / bins for i in range(bins + 1)]
    centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
    # z is bins × steps: each column is one check's histogram as fractions of its samples.
    z = [[None] * len(hist.steps) for _ in range(bins)]
    for j, counts in enumerate(hist.counts):
        total = sum(counts)
        if not total or len(counts) != bins:
            continue
        for i, c in enumerate(counts):
            z[i][j] = c / total
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(
        go.Heatmap(
            x=hist.steps,
            y=centers,
            z=z,
            colorscale=colorscale("Magma"),
            zmin=0,
            colorbar={"title": "fraction", "thickness": 12, "x": 1.08},
            hovertemplate="step %{x}<br>SA bin %{y:.2f}<br>fraction %{z:.3f}<extra></extra>",
            hoverongaps=False,
            name="SA histogram",
        ),
        secondary_y=False,
    )
    pos = [p if _finite(p) else None for p in hist.sa_pos]
    fig.add_trace(
        go.Scatter(
            x=hist.steps,
            y=pos,
            mode="lines",
            name="p+ (fraction of SA > 0)",
            line={"color": "#00e5ff", "width": 2},
            hovertemplate="step %{x}<br>p+ %{y:.3f}<extra></extra>",
        ),
        secondary_y=True,
    )
    if mark_step is not None:
        fig.add_vline(x=mark_step, line_color="white", line_width=1)
    fig.update_yaxes(title_text="SA", range=[-1, 1], secondary_y=False)
    fig.update_yaxes(title_text="p+", range=[0, 1], secondary_y=True, showgrid=False)
    fig.update_xaxes(title_text="step")
    return _base_layout(fig, title, height)


def layer_lines_figure(df, stat: str, *, log_y: bool = False, height: int = 320) -> go.Figure:
    """One statistic for a few chosen layers as lines (``df``: ``step``, ``layer``, ``value``)."""
    title = f"{STAT_TITLES.get(stat, stat)} of selected layers"
    if not len(df):
        return empty_figure(f"{title}: choose layers")
    fig = go.Figure()
    for layer in dict.fromkeys(df["layer"]):
        sub = df[df["layer"] == layer]
        ok = sub[sub["value"].map(_finite)]
        fig.add_trace(
            go.Scatter(
                x=ok["step"].tolist(),
                y=ok["value"].tolist(),
                mode="lines",
                name=_plain(layer),
                hovertemplate=f"%{{fullData.name}}<br>step %{{x}}<br>{stat} %{{y:.4g}}<extra></extra>",
            )
        )
        bad = sub[~sub["value"].map(_finite)]
        if len(bad):
            fig.add_trace(
                go.Scatter(
                    x=bad["step"].tolist(),
                    y=[ok["value"].max() if len(ok) else 0] * len(bad),
                    mode="markers",
                    showlegend=False,
                    marker={"symbol": "x", "size": 9, "color": NONFINITE_COLOR},
                    text=[_plain(f"{layer}: {_label(v)}") for v in bad["value"]],
                    hovertemplate="step %{x}<br>%{text}<extra></extra>",
                )
            )
    if log_y:
        fig.update_yaxes(type="log")
    fig.update_xaxes(title_text="step")
    return _base_layout(fig, title, height)


# -- alerts --------------------------------------------------------------------------------------


def timeline_rows(alerts: Iterable, run_names: dict[int, str]) -> list[dict]:
    """Stored alerts as the rows :func:`alerts_timeline` draws; a run missing from
    ``run_names`` shows as its id."""
    return [
        {
            "run": run_names.get(a.run_id, str(a.run_id)),
            "predictor": a.predictor,
            "layer": a.layer,
            "severity": a.severity,
            "state": a.state,
            "created_at": a.created_at,
            "updated_at": a.updated_at,
            "message": a.message,
        }
        for a in alerts
    ]


def alerts_timeline(rows: Sequence[dict], *, now=None, height: int | None = None) -> go.Figure:
    """Alerts across runs over wall time: one bar per alert from creation to resolution.

    ``rows`` are dicts with ``run``, ``predictor``, ``layer``, ``severity``, ``state``,
    ``created_at``, ``updated_at`` (naive UTC) and ``message``; open alerts extend to ``now``.

    >>> alerts_timeline([{"run": "r", "predictor": "loss_spike", ...}])   # doctest: +SKIP
    """
    if not rows:
        return empty_figure("no alerts")
    from datetime import timedelta

    now = now or max(r["updated_at"] for r in rows)
    fig = go.Figure()

    def lane(r: dict) -> str:  # one lane per (run, predictor, layer): overlapping alerts stay apart
        return " · ".join(_plain(x) for x in (r["run"], r["predictor"], r.get("layer")) if x)

    lanes = list(dict.fromkeys(lane(r) for r in rows))
    for severity in ("critical", "warning", "info"):
        group = [r for r in rows if r["severity"] == severity]
        if not group:
            continue
        xs, ys, texts = [], [], []
        for r in group:
            start = r["created_at"]
            end = r["updated_at"] if r["state"] == "resolved" else now
            end = max(end, start + timedelta(seconds=30))
            message = _plain((r.get("message") or "")[:160])
            label = f"<b>{_plain(r['predictor'])}</b> {r['state']}<br>{message}"
            xs += [start, end, None]
            ys += [lane(r), lane(r), None]
            texts += [label, label, None]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines+markers",
                name=severity,
                line={"color": SEVERITY_COLORS[severity], "width": 8},
                marker={"size": 8},
                text=texts,
                hovertemplate="%{y}<br>%{x}<br>%{text}<extra></extra>",
                connectgaps=False,
            )
        )
    fig.update_yaxes(
        type="category", categoryorder="array", categoryarray=lanes[::-1], automargin=True
    )
    fig.update_xaxes(title_text="time (UTC)")
    return _base_layout(fig, None, height or min(700, 120 + 36 * len(lanes)))
