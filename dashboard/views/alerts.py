"""Alerts across runs: a timeline, filters, open/resolved, and silencing a run for a while."""

from collections import Counter
from datetime import timedelta

import pandas as pd
import streamlit as st

from dashboard import figures, queries
from dashboard import format as fmt

url = queries.db_url()
st.title("Alerts")


def _run_labels(search: str) -> dict[int, str]:
    """id → label of the newest runs whose name or project contains ``search`` (names repeat:
    a resumed run, a second ``train()``)."""
    return {c["id"]: fmt.run_label(c) for c in queries.run_choices(url, search.strip() or None)}


c1, c2, c3, c4, c5 = st.columns([2, 1, 1, 1, 2])
state = c1.segmented_control("State", ["open", "resolved", "all"], default="open")
severity = c2.selectbox("Severity", ["(all)", "critical", "warning", "info"])
predictors = sorted({a.predictor for a in queries.alerts(url)})
predictor = c3.selectbox("Predictor", ["(all)", *predictors])
find = c4.text_input("Find a run", placeholder="name or project", key="alerts-run-search")
labels = _run_labels(find)
run_pick = c5.selectbox(
    "Run", [None, *labels], format_func=lambda i: "(all)" if i is None else labels.get(i, str(i))
)

states = {"open": ("pending", "firing"), "resolved": ("resolved",)}.get(state or "all")
rows = queries.alerts(
    url,
    run_pick,
    states,
    None if severity == "(all)" else severity,
    None if predictor == "(all)" else predictor,
)
# The runs of these alerts, also those older than the pickers' newest few hundred.
known = queries.runs_by_id(url, tuple(sorted({a.run_id for a in rows})))
names = {i: f"{r['name']} · {r['project']}" for i, r in known.items()}  # two teams' "baseline"
shared = Counter(names.values())  # reruns of one name in one project: told apart by their uid
names = {i: f"{n} · {known[i]['uid'][:8]}" if shared[n] > 1 else n for i, n in names.items()}
gone = {"name": "", "project": "", "uid": ""}  # deleted since the alerts were read
records = figures.timeline_rows(rows, names)
st.plotly_chart(figures.alerts_timeline(records, now=queries.now(url)), theme=None, key="timeline")

if rows:
    table = pd.DataFrame(
        [
            {
                "severity": a.severity,
                "state": a.state,
                "run": known.get(a.run_id, gone)["name"],
                "project": known.get(a.run_id, gone)["project"],
                "predictor": a.predictor,
                "layer": a.layer or "",
                "step": a.fired_step if a.fired_step is not None else a.first_step,
                "resolved step": a.resolved_step,
                "message": a.message or "",
                "updated (UTC)": a.updated_at,
                "open": f"run?run={known.get(a.run_id, gone)['uid']}&step="
                f"{a.fired_step if a.fired_step is not None else a.first_step}",
            }
            for a in rows
        ]
    )
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        column_config={"open": st.column_config.LinkColumn("open", display_text="run ↗")},
    )
    st.caption(fmt.count(len(rows), "alert"))
else:
    st.info("No alerts match.")

st.subheader("Silence a run")
st.caption("A silenced run's alerts are still evaluated and listed; only notifications are held.")
find = st.text_input(
    "Find the run to silence", placeholder="part of its name or project", key="silence-search"
)
labels = _run_labels(find)
if find.strip() and not labels:
    st.caption(f"No run's name or project contains {fmt.md(repr(find.strip()))}.")
if labels:
    with st.form("silence"):
        f1, f2, f3 = st.columns([2, 1, 2])
        target = f1.selectbox("Run", list(labels), format_func=lambda i: labels[i])
        hours = f2.number_input("Hours", min_value=0.25, max_value=24.0 * 30, value=2.0, step=0.25)
        reason = f3.text_input("Reason", placeholder="known issue, rerunning")
        if st.form_submit_button("Silence"):
            until = queries.now(url) + timedelta(hours=float(hours))
            queries.silence(url, target, until, reason)
            st.success(f"Silenced {fmt.md(labels[target])} until {until:%Y-%m-%d %H:%M} UTC.")

active = queries.silences(url)
silenced = queries.runs_by_id(url, tuple(sorted({s.run_id for s in active})))
labels = {**{i: fmt.run_label(r) for i, r in silenced.items()}, **labels}
if active:
    for silence in active:
        left, right = st.columns([4, 1])
        until = (
            "until removed"
            if silence.until is None
            else f"until {silence.until:%Y-%m-%d %H:%M} UTC"
        )
        left.write(
            f"Silenced: **{fmt.md(labels.get(silence.run_id, silence.run_id))}** {until}"
            + (f" — {fmt.md(silence.reason)}" if silence.reason else "")
        )
        if right.button("Unsilence", key=f"unsilence-{silence.id}"):
            queries.unsilence(url, silence.run_id)
            st.rerun()
else:
    st.caption("No active silences.")
