"""The Streamlit entry point: ``streamlit run dashboard/app.py`` (``tripwire dashboard`` does it).

Pages live in ``dashboard/views`` (not ``pages/``: Streamlit would serve a ``pages/`` folder's
scripts directly by URL, around this entry point and its password gate). The run page takes
``/run?run=<name or uid>&step=<n>``.
"""

import streamlit as st

from dashboard import auth, queries
from dashboard import format as fmt
from storage import StorageError

st.set_page_config(page_title="Tripwire", page_icon="⚡", layout="wide")

pages = [
    st.Page("views/runs.py", title="Runs", icon=":material/list:", url_path="runs", default=True),
    st.Page("views/run.py", title="Run", icon=":material/monitoring:", url_path="run"),
    st.Page("views/alerts.py", title="Alerts", icon=":material/notifications:", url_path="alerts"),
    st.Page("views/health.py", title="Health", icon=":material/favorite:", url_path="health"),
]
try:
    auth.session_hours()
except ValueError as exc:  # a bad TRIPWIRE_DASHBOARD_SESSION_HOURS
    st.error(str(exc))
    st.stop()
# Navigation is resolved before the gate so that a deep link (/run?run=...) survives signing in.
allowed = auth.allowed()
page = st.navigation(pages, position="sidebar" if allowed else "hidden")
auth.write_cookie()  # set on signing in, cleared on signing out
if not allowed:
    auth.login_form()
    st.stop()
auth.sign_out_button()
try:
    queries.database(queries.db_url())
except StorageError as exc:  # unreachable, or a schema that needs `tripwire db upgrade`
    st.error(f"Cannot use the database: {fmt.md(exc)}")
    st.stop()
page.run()
