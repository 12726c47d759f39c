"""Optional password gate: set ``TRIPWIRE_DASHBOARD_PASSWORD`` to require it (never shown)."""

from __future__ import annotations

import hmac
import os

import streamlit as st

ENV_PASSWORD = "TRIPWIRE_DASHBOARD_PASSWORD"
_SESSION_KEY = "tripwire_authenticated"


def allowed() -> bool:
    """True when no password is configured or this browser session has signed in."""
    return not os.environ.get(ENV_PASSWORD) or bool(st.session_state.get(_SESSION_KEY))


def login_form() -> None:
    """Draw the sign-in form; on the right password, mark the session and rerun the page."""
    secret = os.environ.get(ENV_PASSWORD, "")
    st.title("Tripwire")
    with st.form("login"):
        given = st.text_input("Password", type="password")
        submitted = st.form_submit_button("Sign in")
    if submitted:
        if secret and hmac.compare_digest(given.encode(), secret.encode()):
            st.session_state[_SESSION_KEY] = True
            st.rerun()
        st.error("Wrong password.")
