"""Optional password gate: set ``TRIPWIRE_DASHBOARD_PASSWORD`` to require it (never shown).

Signing in leaves a cookie in the browser, so reloads and new tabs stay signed in for
``TRIPWIRE_DASHBOARD_SESSION_HOURS`` (12 by default), as Grafana's login cookie does. The
cookie holds a token, never the password: when it was issued, a random nonce and an HMAC-SHA256
over both, keyed from the password and a server secret (``TRIPWIRE_DASHBOARD_SECRET``, else
random per server process). A changed password or secret invalidates every token; a tampered,
expired or signed-out one is refused.

Streamlit reads cookies (``st.context.cookies``, those of the page's first request) but has no
way to set one from a script, so the cookie is written by JavaScript in the page: it cannot be
``HttpOnly``. It is ``SameSite=Strict; Path=/`` (and ``Secure`` over https).

>>> token = issue("pw", secret=b"k", now=0.0)
>>> verify(token, "pw", secret=b"k", now=3600.0), verify(token, "other", secret=b"k", now=3600.0)
(True, False)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import threading
import time

import streamlit as st

ENV_PASSWORD = "TRIPWIRE_DASHBOARD_PASSWORD"
ENV_SECRET = "TRIPWIRE_DASHBOARD_SECRET"
ENV_HOURS = "TRIPWIRE_DASHBOARD_SESSION_HOURS"
DEFAULT_HOURS = 12.0
COOKIE = "tripwire_session"
_SESSION_KEY = "tripwire_authenticated"  # the token this tab signed in with
_COOKIE_TODO = "tripwire_cookie_todo"  # ("set", token) or ("clear", None): written on next run
_IGNORED = "tripwire_ignored_token"  # this tab signed out: its first request's cookie is stale
_VERSION = "v1"
_CLOCK_SKEW_S = 60.0

_PROCESS_SECRET = secrets.token_bytes(32)
"""Without ``TRIPWIRE_DASHBOARD_SECRET``: sign-ins last until the server restarts."""
_revoked: set[str] = set()  # nonces of signed-out tokens, for this server process's life


def session_hours() -> float:
    """How long a sign-in lasts: ``$TRIPWIRE_DASHBOARD_SESSION_HOURS``, 12 unless set.

    >>> session_hours()
    12.0
    """
    raw = os.environ.get(ENV_HOURS, "").strip()
    if not raw:
        return DEFAULT_HOURS
    try:
        hours = float(raw)
    except ValueError:
        hours = float("nan")
    if not 0 < hours <= 24 * 365:
        raise ValueError(f"{ENV_HOURS} must be a number of hours > 0 and <= 8760 (got {raw!r})")
    return hours


def _server_secret() -> bytes:
    configured = os.environ.get(ENV_SECRET, "")
    return configured.encode() if configured else _PROCESS_SECRET


def _key(password: str, secret: bytes) -> bytes:
    return hmac.new(secret, b"tripwire-dashboard-session\0" + password.encode(), "sha256").digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _signature(payload: str, password: str, secret: bytes) -> str:
    return _b64(hmac.new(_key(password, secret), payload.encode(), hashlib.sha256).digest())


def issue(password: str, *, secret: bytes | None = None, now: float | None = None) -> str:
    """A signed token saying "signed in at ``now``" (seconds since the epoch)."""
    issued = int(time.time() if now is None else now)
    payload = f"{_VERSION}.{issued}.{secrets.token_urlsafe(12)}"
    return f"{payload}.{_signature(payload, password, secret or _server_secret())}"


def verify(
    token: str | None,
    password: str,
    *,
    secret: bytes | None = None,
    now: float | None = None,
    max_age_s: float | None = None,
) -> bool:
    """True for a token :func:`issue` made with this password and secret, less than
    ``max_age_s`` (the configured session length) ago and not signed out."""
    if not token or not password:
        return False
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != _VERSION or not parts[1].isdigit():
        return False
    payload, given = ".".join(parts[:3]), parts[3]
    expected = _signature(payload, password, secret or _server_secret())
    if not hmac.compare_digest(given.encode(), expected.encode()):
        return False
    now = time.time() if now is None else now
    age = now - int(parts[1])
    max_age_s = session_hours() * 3600 if max_age_s is None else max_age_s
    return -_CLOCK_SKEW_S <= age < max_age_s and parts[2] not in _revoked


def password_set() -> bool:
    return bool(os.environ.get(ENV_PASSWORD))


def _cookie_token() -> str | None:
    """The sign-in cookie of this tab's first request (empty without a browser: AppTest)."""
    token = st.context.cookies.get(COOKIE)
    return None if token == st.session_state.get(_IGNORED) else token


def allowed() -> bool:
    """True when no password is configured, this tab has signed in, or the browser brought a
    valid sign-in cookie (a reload, a new tab)."""
    password = os.environ.get(ENV_PASSWORD)
    if not password:
        return True
    for token in (st.session_state.get(_SESSION_KEY), _cookie_token()):
        if verify(token, password):  # again on every run: a long-open tab expires too
            st.session_state[_SESSION_KEY] = token
            return True
    st.session_state.pop(_SESSION_KEY, None)
    return False


def write_cookie() -> None:
    """Set or clear the sign-in cookie in the browser if the last action asked for it.

    Runs a two-line script in the page (Streamlit cannot set a cookie from the server side), so
    call it on every run, before the gate stops a signed-out page.
    """
    todo = st.session_state.pop(_COOKIE_TODO, None)
    if todo is None:
        return
    action, token = todo
    if action == "set":
        value, max_age = token, int(session_hours() * 3600)
    else:
        value, max_age = "", 0
    st.html(
        "<script>document.cookie = "
        + json.dumps(f"{COOKIE}={value}; Max-Age={max_age}; Path=/; SameSite=Strict")
        + " + (location.protocol === 'https:' ? '; Secure' : '');"
        " if (document.currentScript) document.currentScript.remove();</script>",
        unsafe_allow_javascript=True,
    )


def login_form() -> None:
    """Draw the sign-in form; on the right password, mark the session, ask for the cookie and
    rerun the page."""
    secret = os.environ.get(ENV_PASSWORD, "")
    st.title("Tripwire")
    with st.form("login"):
        given = st.text_input("Password", type="password")
        submitted = st.form_submit_button("Sign in")
    if submitted:
        client = _client_address()
        wait = locked_out_for(client)
        if wait > 0:
            st.error(f"Too many wrong passwords from this address; try again in {wait:.0f} s.")
            return
        if secret and hmac.compare_digest(given.encode(), secret.encode()):
            token = issue(secret)
            st.session_state[_SESSION_KEY] = token
            st.session_state[_COOKIE_TODO] = ("set", token)
            st.rerun()
        note_failure(client)
        st.error("Wrong password.")


MAX_FAILURES = 5
FAILURE_WINDOW_S = 300.0
_failures: dict[str, list[float]] = {}  # client address -> times of its recent wrong passwords
_failures_lock = threading.Lock()


def _client_address() -> str:
    # Behind a reverse proxy this is the proxy's address: its clients share one budget.
    address = getattr(st.context, "ip_address", None)  # Streamlit >= 1.45
    return address if isinstance(address, str) and address else "unknown"


def _recent_failures(client: str, now: float) -> list[float]:
    """``client``'s wrong passwords within the window, the older ones forgotten (the list kept:
    call with ``_failures_lock`` held)."""
    recent = [t for t in _failures.get(client, []) if now - t < FAILURE_WINDOW_S]
    _failures[client] = recent
    return recent


def note_failure(client: str, now: float | None = None) -> None:
    """Count a wrong password from ``client``."""
    now = time.monotonic() if now is None else now
    with _failures_lock:
        _recent_failures(client, now).append(now)


def locked_out_for(client: str, now: float | None = None) -> float:
    """Seconds ``client`` must wait before trying again: after ``MAX_FAILURES`` wrong passwords
    within ``FAILURE_WINDOW_S``, until the oldest of them is that old (0: it may try).

    >>> for t in range(5):
    ...     note_failure("192.0.2.9", now=float(t))
    >>> locked_out_for("192.0.2.9", now=10.0), locked_out_for("192.0.2.9", now=301.0)
    (290.0, 0.0)
    """
    now = time.monotonic() if now is None else now
    with _failures_lock:
        recent = list(_recent_failures(client, now))
    if len(recent) < MAX_FAILURES:
        return 0.0
    return recent[-MAX_FAILURES] + FAILURE_WINDOW_S - now


def sign_out_button() -> None:
    """A sidebar "Sign out" button when a password is set: forgets this tab's sign-in, revokes
    the browser's token on this server and clears the cookie."""
    if not password_set():
        return
    if st.sidebar.button("Sign out", key="tripwire-sign-out"):
        for token in {st.session_state.pop(_SESSION_KEY, None), _cookie_token()} - {None}:
            _revoked.add(token.split(".")[2] if token.count(".") == 3 else token)
        st.session_state[_IGNORED] = st.context.cookies.get(COOKIE)
        st.session_state[_COOKIE_TODO] = ("clear", None)
        st.rerun()
