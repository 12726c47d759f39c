"""Health of Tripwire itself: the database, the scheduler's last tick, notifier failures."""

import pandas as pd
import streamlit as st

from dashboard import format as fmt
from dashboard import queries

url = queries.db_url()
st.title("Health")
info = queries.health(url)

st.subheader("Database")
if info["error"]:
    st.error(f"Cannot read {fmt.md(info['url'])}: {fmt.md(info['error'])}")
    st.stop()
c1, c2, c3 = st.columns(3)
c1.metric("backend", info["backend"])
c2.metric("runs", info["runs"])
c3.metric("schema", "up to date" if info["schema"] == info["head"] else "out of date")
st.caption(f"{fmt.md(info['url'], code=True)} · revision {info['schema']} (head {info['head']})")

st.subheader("Scheduler")
beat = info.get("scheduler")
if beat is None:
    st.warning(
        "The scheduler has never run against this database (`tripwire scheduler` or `tripwire up`)."
    )
else:
    seen, details = beat
    age = (queries.now(url) - seen).total_seconds()
    (st.success if age < 120 else st.warning)(
        f"Last tick {fmt.duration(age)} ago ({seen:%Y-%m-%d %H:%M:%S} UTC)."
    )
    if details:
        st.json(details, expanded=False)

st.subheader("Notifications")
recent = info.get("recent") or []
failed = info.get("failed") or []
c1, c2 = st.columns(2)
c1.metric("recent deliveries", len(recent))
c2.metric("failed", len(failed))
if failed:
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "at (UTC)": n.created_at,
                    "notifier": n.notifier,
                    "event": n.event,
                    "attempts": n.attempts,
                    "error": n.error or "",
                    "alert": n.alert_id,
                }
                for n in failed
            ]
        ),
        hide_index=True,
        width="stretch",
    )
else:
    st.caption("No failed deliveries.")
