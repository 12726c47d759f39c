"""Security: secrets never shown, the dashboard local and gated, webhooks https, names escaped.

Secrets are planted where an operator would put them (the database URL, webhook URLs, the SMTP
password) and looked for everywhere Tripwire speaks: command output, logs, stored delivery
errors, the dashboard. Hostile run and layer names go through the real Slack and email paths.
"""

from __future__ import annotations

import email
import logging
import os
import socket
import subprocess
import sys
import time
from email import policy
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from click.testing import CliRunner
from streamlit.testing.v1 import AppTest

from alerts.config import ConfigError, parse_config
from alerts.notifiers import EmailNotifier, build_routes
from alerts.notifiers.base import check_url
from alerts.notifiers.slack import SlackNotifier
from alerts.service import AlertService
from storage import Database, redact_url, utcnow
from storage import alerts as alert_store
from tests.alerts.conftest import exploding_series, make_run, write_steps
from tests.dashboard.markdown import shown
from tests.pgserver import free_port
from tests.reliability.helpers import TRIPWIRE, Webhook, outward_address, wait_for
from tripwire.cli import cli

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboard"
DB_SECRET, HOOK_SECRET, WEB_SECRET, SMTP_SECRET = (
    "PgS3cret",
    "HookS3cret",
    "WebS3cret",
    "SmtpS3cret",
)
SECRETS = (DB_SECRET, HOOK_SECRET, WEB_SECRET, SMTP_SECRET)
HOSTILE_RUN = "<!channel> <https://evil.example|click> & <script>alert(1)</script>"
HOSTILE_LAYER = "blocks.0.<img src=x onerror=alert(1)>"
FAST_RETRY = {"retry": {"max_attempts": 2, "initial_backoff_s": 0.01, "timeout_s": 2}}


def _closed_port() -> int:
    return free_port()  # nothing listens there once the probe socket is closed


def _secret_env(port: int) -> dict[str, str]:
    """Every notifier configured, every secret set, every endpoint refusing connections."""
    return {
        "TRIPWIRE_SLACK_WEBHOOK_URL": f"http://127.0.0.1:{port}/services/T0/B0/{HOOK_SECRET}",
        "TRIPWIRE_WEBHOOK_URL": f"http://127.0.0.1:{port}/hook?token={WEB_SECRET}",
        "TRIPWIRE_SMTP_HOST": "127.0.0.1",
        "TRIPWIRE_SMTP_PORT": str(port),
        "TRIPWIRE_SMTP_USER": "tripwire",
        "TRIPWIRE_SMTP_PASSWORD": SMTP_SECRET,
        "TRIPWIRE_SMTP_TLS": "none",
        "TRIPWIRE_EMAIL_FROM": "tripwire@example.com",
        "TRIPWIRE_EMAIL_TO": "oncall@example.com",
    }


def _page_text(at: AppTest) -> str:
    """Every text a page shows: titles, captions, markdown, alerts, metrics, tables, JSON."""
    kinds = ("title", "subheader", "header", "caption", "markdown", "text", "code", "error",
             "warning", "info", "success", "metric", "json", "exception")  # fmt: skip
    parts = []
    for kind in kinds:
        for element in at.get(kind):
            parts.append(str(getattr(element, "value", "")) + str(getattr(element, "label", "")))
    for frame in at.get("dataframe"):
        parts.append(frame.value.to_string())
    return shown("\n".join(parts))


def _assert_no_secret(text: str) -> None:
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"{leaked} leaked in: {text[-2000:]}"


# -- secrets -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [["db", "upgrade"], ["db", "status"], ["scheduler", "--once"], ["evaluate"], ["runs"]],
)
def test_the_database_password_never_reaches_command_output(command):
    url = f"postgresql+psycopg://tripwire:{DB_SECRET}@127.0.0.1:{_closed_port()}/tripwire"
    result = CliRunner().invoke(cli, [*command, "--db", url])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.output.startswith("error: ") and "tripwire:***@127.0.0.1" in result.output
    _assert_no_secret(result.output)
    assert DB_SECRET not in repr(Database(url)) and DB_SECRET not in redact_url(url)


@pytest.mark.parametrize(
    "credentials, host",
    [
        (f"tripwire:{DB_SECRET}", "db-host:5432"),  # below: the URL's "://" lost
        (f"tripwire:p@{DB_SECRET}:w#rd", "127.0.0.1:5432"),  # raw @ : # in the password
        (f"tripwire:p@{DB_SECRET}", "127.0.0.1:5432"),
        (f"tripwire:{DB_SECRET}", "127.0.0.1:54x32"),  # a port that is not a number
    ],
)
def test_a_malformed_database_url_is_one_line_without_its_password(credentials, host):
    scheme = "postgresql+psycopg//" if host.startswith("db-host") else "postgresql+psycopg://"
    url = f"{scheme}{credentials}@{host}/tripwire"
    result = CliRunner().invoke(cli, ["db", "status", "--db", url])
    assert result.exit_code == 1 and result.output.startswith("error: "), result.output
    assert len(result.output.strip().splitlines()) == 1
    _assert_no_secret(result.output)
    assert DB_SECRET not in redact_url(url)


def test_a_printed_fix_says_where_the_password_goes_instead_of_masking_it():
    from storage.db import db_argument

    url = f"postgresql+psycopg://tripwire:{DB_SECRET}@db-host:5432/tripwire"
    hint = db_argument(url)  # as in "run: tripwire db upgrade --db URL (...)"
    assert hint.startswith("--db URL (") and "with its password" in hint
    _assert_no_secret(hint)
    assert db_argument("sqlite:///runs.db") == "--db 'sqlite:///runs.db'"  # runnable as printed


def test_notifier_secrets_never_reach_output_logs_or_records(sqlite_url, tmp_path, caplog):
    env = _secret_env(_closed_port())
    config_file = tmp_path / "tripwire.toml"
    config_file.write_text("[retry]\nmax_attempts = 2\ninitial_backoff_s = 0.01\ntimeout_s = 2\n")
    Database(sqlite_url).upgrade()
    result = CliRunner().invoke(
        cli, ["notify", "test", "--db", sqlite_url, "--config", str(config_file)], env=env
    )
    assert result.exit_code == 1 and "3 of 4 notifier(s) failed" in result.output, result.output
    _assert_no_secret(result.output)

    caplog.set_level(logging.DEBUG)
    db = Database(sqlite_url)
    config = parse_config({**FAST_RETRY, "predictors": {"stalled": {"enabled": False}}})
    routes = build_routes(config, env=env)
    _assert_no_secret(" ".join(repr(r.notifier) for r in routes))  # the scheduler's banner
    scalars, layers = exploding_series(steps=260, blowup=150)
    run_id = make_run(db, "secrets", layers=["fc", "ln_out"])
    write_steps(db, run_id, scalars, layers)
    AlertService(db, config, routes, sleep=lambda _s: None).tick()
    failed = alert_store.list_notifications(db, status="failed", limit=1000)
    assert {n.notifier for n in failed} == {"slack", "webhook", "email"}
    _assert_no_secret(" ".join(n.error or "" for n in failed))  # shown on the health page
    _assert_no_secret(caplog.text)
    assert "delivery to slack failed" in caplog.text


def test_a_config_error_about_a_url_does_not_show_it():
    env = {"TRIPWIRE_SLACK_WEBHOOK_URL": f"http://hooks.example.com/services/T/B/{HOOK_SECRET}"}
    with pytest.raises(ConfigError) as caught:
        build_routes(parse_config({}), env=env)
    assert "TRIPWIRE_SLACK_WEBHOOK_URL: must be an https URL" in str(caught.value)
    _assert_no_secret(str(caught.value))


@pytest.mark.postgres
def test_the_dashboard_shows_the_database_without_its_password(pg_url, monkeypatch):
    # The local server trusts loopback, so the (wrong) password is carried but never checked.
    url = pg_url.replace("://root@", f"://root:{DB_SECRET}@")
    Database(url).upgrade()
    monkeypatch.setenv("TRIPWIRE_DB_URL", url)
    monkeypatch.delenv("TRIPWIRE_DASHBOARD_PASSWORD", raising=False)
    at = AppTest.from_file(str(DASHBOARD / "views" / "health.py"), default_timeout=60).run()
    assert not at.exception
    page = _page_text(at)
    assert "root:***@127.0.0.1" in page
    _assert_no_secret(page)


def test_a_dead_database_is_reported_without_its_password(monkeypatch):
    url = f"postgresql+psycopg://tripwire:{DB_SECRET}@127.0.0.1:{_closed_port()}/tripwire"
    monkeypatch.setenv("TRIPWIRE_DB_URL", url)
    monkeypatch.delenv("TRIPWIRE_DASHBOARD_PASSWORD", raising=False)
    health = AppTest.from_file(str(DASHBOARD / "views" / "health.py"), default_timeout=60).run()
    assert not health.exception
    shown = _page_text(health)
    assert "Cannot read" in shown and "tripwire:***@127.0.0.1" in shown, shown
    _assert_no_secret(shown)
    # The runs page shows the error as an exception (message and trace): still no password.
    runs = AppTest.from_file(str(DASHBOARD / "views" / "runs.py"), default_timeout=60).run()
    shown = _page_text(runs) + "".join(e.message + "".join(e.stack_trace) for e in runs.exception)
    _assert_no_secret(shown)


# -- the dashboard: local by default, password gate, silencing --------------------------------------


@pytest.mark.slow
def test_the_dashboard_listens_on_loopback_only_by_default(sqlite_url, tmp_path):
    Database(sqlite_url).upgrade()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIPWIRE_")}
    server = subprocess.Popen(
        [TRIPWIRE, "dashboard", "--db", sqlite_url, "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def answers(host: str) -> bool:
            with socket.socket() as s:
                s.settimeout(1)
                return s.connect_ex((host, port)) == 0

        wait_for(lambda: answers("127.0.0.1"), 90, "the dashboard")
        time.sleep(1.5)  # `tripwire dashboard` polls the health endpoint, then says where it is
        outward = outward_address()
        if outward is not None:
            assert not answers(outward), f"the dashboard answers on {outward}"
    finally:
        server.terminate()
        out, _ = server.communicate(timeout=30)
    assert "Dashboard: http://localhost" in out and "beyond localhost" not in out


def _db_with_alerts(url: str) -> int:
    db = Database(url)
    db.upgrade()
    scalars, layers = exploding_series(steps=260, blowup=150)
    run_id = make_run(db, "gated", layers=["fc", "ln_out"])
    write_steps(db, run_id, scalars, layers)
    config = parse_config({"predictors": {"stalled": {"enabled": False}}})
    AlertService(db, config, [], sleep=lambda _s: None).tick()
    return run_id


def test_silencing_needs_the_dashboard_password(sqlite_url, monkeypatch):
    run_id = _db_with_alerts(sqlite_url)
    monkeypatch.setenv("TRIPWIRE_DB_URL", sqlite_url)
    monkeypatch.setenv("TRIPWIRE_DASHBOARD_PASSWORD", "let-me-in")
    at = AppTest.from_file(str(DASHBOARD / "app.py"), default_timeout=60).run()
    at.switch_page("views/alerts.py").run()
    assert not at.exception
    assert "Silence a run" not in _page_text(at)  # only the password form
    assert [b.label for b in at.button] == ["Sign in"]

    at.text_input[0].input("let-me-in")
    at.button[0].click().run()
    at.switch_page("views/alerts.py").run()
    assert not at.exception and "Silence a run" in _page_text(at)
    silence = next(b for b in at.button if b.label == "Silence")
    silence.click().run()
    db = Database(sqlite_url)
    assert [s.run_id for s in alert_store.active_silences(db, utcnow())] == [run_id]


def test_password_guessing_is_locked_out_after_five_wrong_tries(sqlite_url, monkeypatch):
    from dashboard import auth

    monkeypatch.setattr(auth, "_failures", {})
    Database(sqlite_url).ensure_schema()
    monkeypatch.setenv("TRIPWIRE_DB_URL", sqlite_url)
    monkeypatch.setenv("TRIPWIRE_DASHBOARD_PASSWORD", "let-me-in")
    at = AppTest.from_file(str(DASHBOARD / "app.py"), default_timeout=60).run()

    def sign_in(password: str) -> str:
        at.text_input[0].input(password)
        at.button[0].click().run()
        assert not at.exception
        return at.error[0].value if at.error else ""

    for _ in range(auth.MAX_FAILURES):
        assert sign_in("guess") == "Wrong password."
    assert sign_in("let-me-in").startswith("Too many wrong passwords from this address")
    assert [b.label for b in at.button] == ["Sign in"]  # still gated: not even the right one

    for times in auth._failures.values():  # five minutes pass
        times[:] = [t - auth.FAILURE_WINDOW_S for t in times]
    assert sign_in("let-me-in") == ""
    assert "Sign in" not in [b.label for b in at.button]


# -- webhooks: https only, except loopback ---------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://hooks.slack.com/services/T/B/X", True),
        ("http://127.0.0.1:8080/hook", True),
        ("http://localhost/hook", True),
        ("http://[::1]:9000/hook", True),
        ("http://hooks.slack.com/services/T/B/X", False),
        ("http://127.0.0.1.evil.example/hook", False),
        ("http://10.0.0.5/hook", False),
        ("ftp://127.0.0.1/hook", False),
        ("file:///etc/passwd", False),
        ("javascript:alert(1)", False),
        ("not a url", False),
    ],
)
def test_webhook_urls_must_be_https_except_to_loopback(url, ok):
    if ok:
        assert check_url(url, "TRIPWIRE_WEBHOOK_URL") == url
    else:
        with pytest.raises(ValueError, match="TRIPWIRE_WEBHOOK_URL") as caught:
            check_url(url, "TRIPWIRE_WEBHOOK_URL")
        assert url not in str(caught.value)


# -- escaping: no Slack mrkdwn or HTML injection from a run or layer name -----------------------------


def _hostile_message(run_name: str = HOSTILE_RUN):
    from datetime import datetime

    from alerts.message import render
    from storage.entities import Alert, Run

    t = datetime(2025, 1, 1)
    run = Run(1, "u1", "default", run_name, "running", t)
    alert = Alert(
        id=1,
        run_id=1,
        predictor="sa_collapse",
        layer=HOSTILE_LAYER,
        fingerprint="f",
        severity="warning",
        state="firing",
        first_step=10,
        last_step=20,
        created_at=t,
        updated_at=t,
        fired_step=20,
        message=f"SA signs of {HOSTILE_LAYER} collapsed",
    )
    return render("firing", [alert], run, "http://localhost:8501")


def test_slack_messages_escape_run_and_layer_names():
    hook = Webhook()
    try:
        SlackNotifier(hook.url).send(_hostile_message())
    finally:
        hook.close()
    [body] = hook.bodies
    sent = body["text"] + " " + " ".join(b["text"]["text"] for b in body["blocks"])
    for raw in ("<!channel>", "<https://evil.example|click>", "<script>", "<img"):
        assert raw not in sent
    assert "&lt;!channel&gt;" in sent and "&amp;" in sent and "&lt;img src=x" in sent


class _Mailbox:
    def __init__(self) -> None:
        self.messages: list = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        self.messages.append(email.message_from_bytes(envelope.content, policy=policy.default))
        return "250 OK"


def _mail(message) -> email.message.EmailMessage:
    """Send ``message`` through the email notifier to a real SMTP server on loopback."""
    mailbox = _Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        EmailNotifier(
            "127.0.0.1",
            port=controller.port,
            tls="none",
            sender="t@example.com",
            to=["o@example.com"],
        ).send(message)
    finally:
        controller.stop()
    [mail] = mailbox.messages
    return mail


def test_email_html_escapes_run_and_layer_names():
    mail = _mail(_hostile_message())
    html = mail.get_body(("html",)).get_content()
    for raw in ("<script>", "<img src=x", "<!channel>"):
        assert raw not in html
    assert "&lt;script&gt;" in html and "&lt;img src=x onerror=alert(1)&gt;" in html


def test_a_newline_in_a_run_name_neither_injects_headers_nor_loses_the_mail():
    mail = _mail(_hostile_message("nightly\r\nBcc: victim@example.com"))
    assert mail["Bcc"] is None
    assert "nightly Bcc: victim@example.com" in mail["Subject"]


def test_the_streamlit_command_line_carries_no_database_url():
    from dashboard import server

    argv = " ".join(server.command())
    assert "postgresql" not in argv and "sqlite" not in argv and "127.0.0.1" in argv
    assert sys.executable in argv
