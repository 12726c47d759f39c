"""The Streamlit entry point: ``streamlit run dashboard/app.py`` (``tripwire dashboard`` does it).

Pages live in ``dashboard/pages``; the run page takes ``?run=<name or uid>&step=<n>``.
"""

import streamlit as st

from dashboard import auth

st.set_page_config(page_title="Tripwire", page_icon="⚡", layout="wide")

if not auth.gate():
    st.stop()

pages = [
    st.Page("pages/runs.py", title="Runs", icon="🏃", url_path="runs", default=True),
    st.Page("pages/run.py", title="Run", icon="📈", url_path="run"),
    st.Page("pages/alerts.py", title="Alerts", icon="🚨", url_path="alerts"),
    st.Page("pages/health.py", title="Health", icon="🩺", url_path="health"),
]
st.navigation(pages).run()
