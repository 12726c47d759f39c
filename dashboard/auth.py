"""Optional password gate: set ``TRIPWIRE_DASHBOARD_PASSWORD`` to require it (never shown)."""

from __future__ import annotations

import hmac
import os

import streamlit as st

ENV_PASSWORD = "TRIPWIRE_DASHBOARD_PASSWORD"


def gate() -> bool:
    """True when the visitor may see the dashboard; otherwise draws the password form."""
    secret = os.environ.get(ENV_PASSWORD)
    if not secret or st.session_state.get("tripwire_authenticated"):
        return True
    st.title("Tripwire")
    with st.form("login"):
        given = st.text_input("Password", type="password")
        submitted = st.form_submit_button("Sign in")
    if submitted:
        if hmac.compare_digest(given.encode(), secret.encode()):
            st.session_state["tripwire_authenticated"] = True
            st.rerun()
        st.error("Wrong password.")
    return False
