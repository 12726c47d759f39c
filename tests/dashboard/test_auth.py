"""The sign-in token of the password gate: what a browser cookie may hold and when it is refused
(the browser tests check that the served dashboard applies it)."""

from __future__ import annotations

import pytest

from dashboard import auth

SECRET = b"server-secret"


def test_a_token_is_accepted_until_it_expires():
    token = auth.issue("pw", secret=SECRET, now=1_000_000.0)
    assert "pw" not in token.split(".")  # the password is never in it
    for age_h in (0.0, 1.0, 11.99):
        assert auth.verify(token, "pw", secret=SECRET, now=1_000_000.0 + age_h * 3600)
    assert not auth.verify(token, "pw", secret=SECRET, now=1_000_000.0 + 12 * 3600)
    assert not auth.verify(token, "pw", secret=SECRET, now=1_000_000.0 + 30 * 24 * 3600)
    assert not auth.verify(token, "pw", secret=SECRET, now=1_000_000.0 - 3600)  # from the future


def test_a_shorter_session_length_applies_to_tokens_already_issued(monkeypatch):
    token = auth.issue("pw", secret=SECRET, now=0.0)
    assert auth.verify(token, "pw", secret=SECRET, now=2 * 3600)
    monkeypatch.setenv(auth.ENV_HOURS, "1.5")
    assert not auth.verify(token, "pw", secret=SECRET, now=2 * 3600)


def test_another_password_or_secret_refuses_every_token():
    token = auth.issue("pw", secret=SECRET, now=0.0)
    assert not auth.verify(token, "pw2", secret=SECRET, now=60.0)
    assert not auth.verify(token, "pw", secret=b"another-secret", now=60.0)


def test_a_tampered_token_is_refused():
    token = auth.issue("pw", secret=SECRET, now=0.0)
    version, issued, nonce, signature = token.split(".")
    later = f"{version}.{int(issued) + 10 * 3600}.{nonce}.{signature}"  # push the expiry back
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    for forged in (later, flipped, f"{version}.{issued}.{nonce}.", "", "garbage", token + "."):
        assert not auth.verify(forged, "pw", secret=SECRET, now=60.0), forged
    assert not auth.verify(None, "pw", secret=SECRET, now=60.0)
    assert not auth.verify(token, "", secret=SECRET, now=60.0)


@pytest.mark.parametrize("value", ["0", "-3", "abc", "nan", "9000"])
def test_a_bad_session_length_names_the_variable(monkeypatch, value):
    monkeypatch.setenv(auth.ENV_HOURS, value)
    with pytest.raises(ValueError, match=f"{auth.ENV_HOURS} must be"):
        auth.session_hours()
