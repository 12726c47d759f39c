"""Runs: every run with its status, progress, loss and alerts (open, or firing when it ended);
refreshes while runs are live."""

import pandas as pd
import streamlit as st

from dashboard import format as fmt
from dashboard import queries

url = queries.db_url()
st.title("Runs")
if flash := st.session_state.pop("tripwire-flash", None):  # what the last page did: a deletion
    st.success(flash)

left, middle, right = st.columns([1, 1, 2])
project = left.selectbox("Project", ["(all)", *queries.projects(url)])
status = middle.selectbox("Status", ["(all)", "running", "stalled", "finished", "failed"])
name = right.text_input("Name contains", placeholder="part of a run name")

filters = (
    None if project == "(all)" else project,
    None if status == "(all)" else status,
    name or None,
)
live = any(r["status"] == "running" for r in queries.runs_overview(url))


@st.fragment(run_every=queries.LIVE_TTL_S if live else 15)
def runs_table() -> None:
    rows = queries.runs_overview(url, *filters)
    if not rows:
        st.info("No runs yet. Start one with `collector.watch(model, ...)` or `tripwire demo`.")
        return
    table = pd.DataFrame(
        {
            "run": [r["name"] for r in rows],
            "project": [r["project"] for r in rows],
            "status": [r["status"] for r in rows],
            "last step": [r["last_step"] for r in rows],
            "last loss": [fmt.number(r["last_loss"]) for r in rows],
            "alerts": [fmt.alerts_cell(r) for r in rows],
            "started (UTC)": [r["started_at"] for r in rows],
            "duration": [fmt.duration(r["duration_s"]) for r in rows],
            "open": [f"run?run={r['uid']}" for r in rows],
        }
    )
    picked = st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        on_select="rerun",
        selection_mode="single-row",
        key="runs_table",
        column_config={
            "open": st.column_config.LinkColumn("open", display_text="open ↗"),
            "started (UTC)": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss"),
        },
    )
    live_now = sum(r["status"] == "running" for r in rows)
    silent = fmt.duration(queries.stalled_after_s())
    st.caption(
        f"{fmt.count(len(rows), 'run')} · {live_now} live · select a row to open it"
        + (" · refreshing every few seconds" if live_now else "")
        + f" · stalled: running, silent over {silent}"
    )
    selected = picked.selection.rows if picked is not None else []
    if selected:
        st.switch_page("views/run.py", query_params={"run": rows[selected[0]]["uid"]})


runs_table()
