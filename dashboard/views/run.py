"""One run: scalars with alert markers, SA heatmaps, per-layer statistics, alerts and config.

Deep link: ``/run?run=<name or uid>&step=<n>[&layer=<name>]`` (what alert messages link to).
"""

import pandas as pd
import streamlit as st

from dashboard import auth, figures, insights, queries
from dashboard import format as fmt
from storage.entities import listed

url = queries.db_url()
params = st.query_params
newest = queries.run_choices(url)
if not newest:
    st.title("Run")
    st.info("No runs in this database yet.")
    st.stop()


def _candidates(name: str, named: list[dict]) -> None:
    """A link names several runs: list them, newest first, each linking to its own page."""
    st.title(f"{len(named)} runs are named {fmt.md(name)}")
    st.caption(
        "Reruns (a resumed run, a second `trainer.train()`) and other projects' runs can share a "
        "name; a link by uid, as alert messages use, opens one run. Newest first:"
    )
    keep = {k: params[k] for k in ("step", "layer") if k in params}
    for c in named:
        st.page_link(
            "views/run.py",
            label=f"{fmt.md(c['project'])} · started {c['started_at']:%Y-%m-%d %H:%M:%S} UTC · "
            f"{c['status']} · uid {fmt.md(c['uid'])}",
            query_params={"run": c["uid"], **keep},
            icon=":material/monitoring:",
        )


ref = params.get("run")
run = queries.find_run(url, ref) if ref else None
if ref and (run is None or run["uid"] != ref):  # a name, not a uid
    named = queries.runs_named(url, ref)
    if len(named) > 1:  # never guess which one was meant: say so and let the user choose
        _candidates(ref, named)
        st.session_state["run-candidates-shown"] = True
        st.stop()
    if not named:
        st.warning(f"No run named or with uid {fmt.md(repr(ref))}; showing the newest run.")
run = run or queries.find_run(url, newest[0]["uid"])

search = st.sidebar.text_input(
    "Find a run", placeholder="part of its name or project", key="run-search"
)
choices = queries.run_choices(url, search) if search.strip() else newest
labels = {c["uid"]: fmt.run_label(c) for c in choices}
if run["uid"] not in labels:
    labels = {run["uid"]: fmt.run_label(run), **labels}
picked = st.sidebar.selectbox(
    "Run", list(labels), index=list(labels).index(run["uid"]), format_func=labels.get
)
if search.strip():
    found = len(choices)
    st.sidebar.caption(
        f"No run's name or project contains {fmt.md(repr(search.strip()))}."
        if not found
        else f"The newest {found} matching runs."
        if found == queries.PICKER_LIMIT
        else f"{fmt.count(found, 'matching run')}."
    )
elif len(newest) == queries.PICKER_LIMIT:
    st.sidebar.caption(f"The newest {queries.PICKER_LIMIT} runs: type above to find older ones.")
if picked != run["uid"]:
    st.query_params.clear()
    st.query_params["run"] = picked
    run = queries.find_run(url, picked)
elif params.get("run") != run["uid"] and params.get("run") != run["name"]:
    st.query_params["run"] = run["uid"]
elif st.session_state.pop("run-candidates-shown", False):
    # A page link to this same page leaves the address bar on the name: write the uid there.
    st.query_params.from_dict(params.to_dict())

try:
    mark_step = int(params["step"]) if "step" in params else None
except ValueError:
    mark_step = None

run_id = run["id"]
layers = queries.layer_names(url, run_id)
rows = [r for r in queries.runs_overview(url, run["project"]) if r["id"] == run_id]
summary = rows[0] if rows else {"status": run["status"], "duration_s": None}
live = summary["status"] == "running"

# -- controls ------------------------------------------------------------------------------------
range_slot = st.sidebar.container()  # the step range: drawn by the refreshing body, it follows
BASE_SCALARS = ("loss", "lr", "grad_norm")
more_keys = [k for k in queries.scalar_keys(url, run_id) if k not in BASE_SCALARS]
more = st.sidebar.multiselect(
    "More scalars",
    more_keys,
    default=[k for k in figures.SIGNAL_SCALARS if k in more_keys],
    format_func=lambda k: figures.SCALAR_TITLES.get(k, k),
    key=f"more-{run_id}",
)
scalar_keys = (*BASE_SCALARS, *more)
others = {uid: label for uid, label in labels.items() if uid != run["uid"]}
overlay = st.sidebar.multiselect("Overlay runs", list(others), format_func=others.get)
per_layer_stat = st.sidebar.radio(
    "Per-layer statistic",
    ["grad_norm", "weight_norm", "sigma1", "stable_rank", "update_ratio"],
    format_func=lambda s: figures.STAT_TITLES[s],
)
refresh = queries.refresh_seconds(summary.get("last_step"), run.get("every"), len(layers))
if live:
    st.sidebar.caption(f"Live: refreshing every {refresh} s.")


def _step_of(alert) -> int:
    return alert.fired_step if alert.fired_step is not None else alert.first_step


def _replaced_at(alert) -> int | None:
    """The step the run went back to, for an alert about steps a resumed attempt replaced."""
    rewound_to = (alert.details or {}).get("rewound_to")
    return rewound_to if rewound_to is not None and _step_of(alert) >= rewound_to else None


def step_range() -> tuple[int | None, int | None]:
    """The sidebar's step-range slider as (start, end), None for an open end. Its maximum is the
    run's last step, read again on every refresh; a range that ended at the last step keeps
    following the run, one the user narrowed stays put."""
    _first, last = queries.step_bounds(url, run_id)
    if last is None or last <= 0:
        range_slot.empty()  # keeps the slot for when the first steps come in
        return None, None
    range_key, seen_key = f"range-{run_id}", f"range-max-{run_id}"
    lo, hi = st.session_state.get(range_key, (0, int(last)))
    if hi == st.session_state.get(seen_key, hi):
        hi = int(last)  # the range ended at the last step: keep following a live run
    st.session_state[range_key] = (min(lo, int(last)), min(hi, int(last)))
    st.session_state[seen_key] = int(last)
    start, end = range_slot.slider("Step range", min_value=0, max_value=int(last), key=range_key)
    return (None if start == 0 else start), (None if end == last else end)  # open: grows


@st.fragment(run_every=refresh if live else None)
def body() -> None:
    start, end = step_range()
    rows = [r for r in queries.runs_overview(url, run["project"]) if r["id"] == run_id]
    info = rows[0] if rows else summary
    version = (info.get("last_step"), info["status"])  # new steps → new cache entries
    ended = info["status"] in ("finished", "failed")
    st.title(fmt.md(run["name"]))
    st.caption(
        f"project {fmt.md(run['project'])} · started {run['started_at']:%Y-%m-%d %H:%M:%S} UTC"
        f" · uid {fmt.md(run['uid'], code=True)}"
    )
    cols = st.columns(5)
    cols[0].metric("status", info["status"])
    cols[1].metric("last step", info.get("last_step") if info.get("last_step") is not None else "—")
    cols[2].metric("last loss", fmt.number(info.get("last_loss")) or "—")
    label, value, tooltip = fmt.alerts_tile(info)
    cols[3].metric(label, value, help=tooltip)
    cols[4].metric("duration", fmt.duration(info.get("duration_s")) or "—")

    run_alerts = queries.alerts(url, run_id)
    shown_alerts = [  # not on the curve a resumed attempt drew over the steps they were about
        a
        for a in run_alerts
        if (start is None or _step_of(a) >= start)
        and (end is None or _step_of(a) <= end)
        and _replaced_at(a) is None
    ]
    frames = [queries.scalars(url, run_id, scalar_keys, start, end, version)]
    if overlay:
        frames[0] = frames[0].assign(run=run["name"])
        for uid in overlay:
            other = queries.find_run(url, uid)
            if other:
                df = queries.scalars(
                    url,
                    other["id"],
                    scalar_keys,
                    start,
                    end,
                    (other["last_step"], other["status"]),
                )
                frames.append(df.assign(run=f"{other['name']} ({uid[:6]})"))
    scalars = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    st.plotly_chart(
        figures.scalars_figure(
            scalars,
            keys=scalar_keys,
            alerts=shown_alerts,
            alerts_run=run["name"] if overlay else None,
            mark_step=mark_step,
            ended=ended,
        ),
        theme=None,
        key="scalars",
    )

    stats = ("sa_imbalance", per_layer_stat)
    grids = queries.layer_grids(url, run_id, stats, start, end, version)
    sa_grid = grids["sa_imbalance"]
    st.subheader("Spectral alignment")
    st.plotly_chart(
        figures.layer_heatmap(
            sa_grid, zmin=0, zmax=1, scale="Inferno", mark_step=mark_step, ended=ended
        ),
        theme=None,
        key="sa_heatmap",
    )
    collapses, nonfinite = queries.sa_firsts(url, run_id, stats, start, end, version)
    for label, found in (
        ("First to collapse against their own baseline", collapses),
        ("First non-finite", nonfinite),
    ):
        if found:
            shown = listed([f"{fmt.md(name, code=True)} at step {step}" for name, step in found])
            st.caption(f"{label}: {shown}.")
    if sa_grid.steps and not collapses:
        st.caption("No layer's SA signs collapsed against its own baseline.")

    if layers:
        suggested = params.get("layer") or insights.default_layer(sa_grid, layers, collapses)
        index = layers.index(suggested) if suggested in layers else 0
        layer = st.selectbox("Layer", layers, index=index, key=f"layer-{run_id}")
        st.plotly_chart(
            figures.sa_hist_figure(
                queries.sa_hist(url, run_id, layer, start, end, version), mark_step=mark_step
            ),
            theme=None,
            key="sa_hist",
        )
    else:
        layer = None

    st.subheader("Per-layer statistics")
    st.plotly_chart(
        figures.layer_heatmap(grids[per_layer_stat], mark_step=mark_step, ended=ended),
        theme=None,
        key="stat_heatmap",
    )
    if layers:
        chosen = st.multiselect(
            "Layers to plot", layers, default=[layer] if layer else [], key=f"lines-{run_id}"
        )
        lines = queries.layer_lines(url, run_id, tuple(chosen), per_layer_stat, start, end, version)
        st.plotly_chart(
            figures.layer_lines_figure(
                lines, per_layer_stat, log_y=per_layer_stat in figures.LOG_COLOR_STATS
            ),
            theme=None,
            key="stat_lines",
        )

    st.subheader("Alerts")
    if run_alerts:
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "severity": a.severity,
                        "state": a.state
                        if _replaced_at(a) is None
                        else f"{a.state}: the run went back to step {_replaced_at(a)}",
                        "predictor": a.predictor,
                        "layer": a.layer or "",
                        "first step": a.first_step,
                        "fired step": a.fired_step,
                        "resolved step": a.resolved_step,
                        "score": fmt.number(a.score),
                        "message": a.message or "",
                    }
                    for a in run_alerts
                ]
            ),
            hide_index=True,
            width="stretch",
        )
    else:
        st.caption("No alerts for this run.")


body()

with st.expander("Config"):
    st.json(run.get("config") or {})
    st.caption(
        f"uid {fmt.md(run['uid'], code=True)} · host {fmt.md(run.get('host') or '?')}"
        f" · check every {run.get('every') or '?'} steps"
        + (f" · error: {fmt.md(run['error'])}" if run.get("error") else "")
    )


confirm_key = f"delete-confirm-{run_id}"
with st.expander("Delete this run", expanded=bool(st.session_state.get(confirm_key))):
    st.caption(
        "Deletes the run and everything stored for it: statistics, scalars, alerts, their "
        "notifications and silences. It cannot be undone (`tripwire runs delete` does the same "
        "from a shell)."
    )
    if live:
        st.info(
            "This run is still reporting: stop its trainer first (a killed one counts as "
            "stalled after a few minutes, and can be deleted then)."
        )
    else:
        with st.form(f"delete-{run_id}"):
            typed = st.text_input(
                f"Type the run's name, {fmt.md(run['name'], code=True)}, to confirm",
                key=confirm_key,
            )
            confirmed = st.form_submit_button("Delete this run", type="primary")
        if confirmed:
            if typed != run["name"]:
                st.error("The name typed does not match this run's name; nothing was deleted.")
            elif auth.allowed():  # the gate again, at the moment of the write
                queries.delete_run(url, run_id)
                st.session_state["tripwire-flash"] = (
                    f"Deleted run {fmt.md(run['name'])} ({fmt.md(run['project'])}, uid "
                    f"{fmt.md(run['uid'], code=True)}) and everything stored for it."
                )
                st.query_params.clear()
                st.switch_page("views/runs.py")
