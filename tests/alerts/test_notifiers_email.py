"""The email notifier against a real SMTP server on loopback (aiosmtpd): plain, STARTTLS, SSL."""

from __future__ import annotations

import email
import shutil
import socket
import ssl
import subprocess
from email import policy

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from alerts.config import ConfigError, RetrySettings, load_config, parse_config
from alerts.delivery import send_with_retry
from alerts.notifiers import EmailNotifier, build_routes
from tests.alerts.test_notifiers_http import alert_message
from tests.needs import missing
from tests.reliability.helpers import outward_address

FAST = RetrySettings(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02, timeout_s=5)


class Mailbox:
    def __init__(self, reply: str | None = None):
        self.messages: list[email.message.EmailMessage] = []
        self.envelopes = []
        self.reply = reply

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        if self.reply:
            return self.reply
        self.envelopes.append(envelope)
        self.messages.append(email.message_from_bytes(envelope.content, policy=policy.default))
        return "250 OK"


class Refusing(Mailbox):
    """Refuses the sender (MAIL FROM) or the recipients (RCPT TO; all, or ``only`` one) with
    ``refusal``."""

    def __init__(self, command: str, refusal: str, only: str | None = None):
        super().__init__()
        self.command, self.refusal, self.only = command, refusal, only

    async def handle_MAIL(self, server, session, envelope, address, options):  # noqa: N802
        if self.command == "MAIL":
            return self.refusal
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, options):  # noqa: N802
        if self.command == "RCPT" and self.only in (None, address):
            return self.refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 (made by the openssl tool), and a client
    context that trusts it."""
    if shutil.which("openssl") is None:
        missing("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key_file), "-out", str(cert_file),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client


def _authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.password == b"s3cret"
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def smtp():
    controllers = []

    def start(mailbox: Mailbox, **kwargs):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        controller = Controller(mailbox, hostname="127.0.0.1", port=port, **kwargs)
        controller.start()
        controllers.append(controller)
        return port

    yield start
    for c in controllers:
        c.stop()


def _check_content(msg):
    assert msg["Subject"] == "[tripwire] FIRING warning: sa_collapse on run team/gpt-lr3e-3"
    assert (
        msg["From"] == "tripwire@example.com" and msg["To"] == "oncall@example.com, ml@example.com"
    )
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    for part in (text, html):
        assert "blocks.1.mlp.fc" in part and "260" in part and "2.71" in part
        assert (
            "https://dash.example.com/run?run=uid7&amp;step=260&amp;layer=blocks.1.mlp.fc" in part
            or ("https://dash.example.com/run?run=uid7&step=260&layer=blocks.1.mlp.fc" in part)
        )
    assert "<a href=" in html and "<a href=" not in text


def test_plain_smtp_delivers_text_and_html(smtp):
    box = Mailbox()
    port = smtp(box)
    notifier = EmailNotifier(
        "127.0.0.1",
        port=port,
        tls="none",
        sender="tripwire@example.com",
        to=["oncall@example.com", "ml@example.com"],
    )
    assert send_with_retry(notifier, alert_message(), FAST) == (1, None)
    (msg,) = box.messages
    _check_content(msg)
    assert box.envelopes[0].rcpt_tos == ["oncall@example.com", "ml@example.com"]


def test_starttls_with_login(smtp, certificate):
    server_ctx, client_ctx = certificate
    box = Mailbox()
    port = smtp(
        box,
        tls_context=server_ctx,
        require_starttls=True,
        authenticator=_authenticator,
        auth_require_tls=True,
    )
    notifier = EmailNotifier(
        "127.0.0.1",
        port=port,
        tls="starttls",
        user="bot",
        password="s3cret",
        sender="tripwire@example.com",
        to=["oncall@example.com", "ml@example.com"],
        ssl_context=client_ctx,
    )
    assert send_with_retry(notifier, alert_message(), FAST) == (1, None)
    _check_content(box.messages[0])
    assert "s3cret" not in repr(notifier)


def test_wrong_password_is_not_retried(smtp, certificate):
    server_ctx, client_ctx = certificate
    port = smtp(
        Mailbox(),
        tls_context=server_ctx,
        require_starttls=True,
        authenticator=_authenticator,
    )
    notifier = EmailNotifier(
        "127.0.0.1",
        port=port,
        user="bot",
        password="wrong",
        sender="a@example.com",
        to=["b@example.com"],
        ssl_context=client_ctx,
    )
    attempts, error = send_with_retry(notifier, alert_message(), FAST)
    assert attempts == 1 and not error.recoverable and "authentication" in str(error)
    assert "wrong" not in str(error)


def test_implicit_ssl(smtp, certificate):
    server_ctx, client_ctx = certificate
    box = Mailbox()
    port = smtp(box, ssl_context=server_ctx)
    notifier = EmailNotifier(
        "127.0.0.1",
        port=port,
        tls="ssl",
        sender="tripwire@example.com",
        to=["oncall@example.com", "ml@example.com"],
        ssl_context=client_ctx,
    )
    assert send_with_retry(notifier, alert_message(), FAST) == (1, None)
    _check_content(box.messages[0])


def test_untrusted_certificate_fails_without_retry(smtp, certificate):
    server_ctx, _ = certificate
    port = smtp(Mailbox(), tls_context=server_ctx, require_starttls=True)
    notifier = EmailNotifier("127.0.0.1", port=port, sender="a@example.com", to=["b@example.com"])
    attempts, error = send_with_retry(notifier, alert_message(), FAST)
    assert attempts == 1 and not error.recoverable and "TLS" in str(error)


def test_a_server_without_starttls_fails_at_once_and_is_recorded(
    smtp, sqlite_db, monkeypatch, tmp_path
):
    from click.testing import CliRunner

    from storage import alerts as store
    from tripwire.cli import cli

    port = smtp(Mailbox())  # no tls_context: the server does not offer STARTTLS
    for var in ("TRIPWIRE_CONFIG", "TRIPWIRE_SLACK_WEBHOOK_URL", "TRIPWIRE_WEBHOOK_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    env = {
        "TRIPWIRE_SMTP_HOST": "127.0.0.1",
        "TRIPWIRE_SMTP_PORT": str(port),
        "TRIPWIRE_EMAIL_FROM": "tripwire@example.com",
        "TRIPWIRE_EMAIL_TO": "oncall@example.com",
    }
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    result = CliRunner().invoke(cli, ["notify", "test", "--db", sqlite_db.url])
    assert result.exit_code == 1
    assert "failed after 1 attempt(s)" in result.output and "STARTTLS" in result.output
    (note,) = [n for n in store.list_notifications(sqlite_db) if n.notifier == "email"]
    assert (note.status, note.attempts) == ("failed", 1)
    assert "STARTTLS extension not supported by server" in note.error


@pytest.mark.parametrize(
    "command, refusal, attempts",
    [
        ("MAIL", "553 5.7.1 sender address rejected", 1),
        ("RCPT", "550 5.1.1 no such user", 1),
        ("RCPT", "450 4.7.1 greylisted, try again later", 3),
    ],
)
def test_a_refused_address_is_retried_only_when_temporary(smtp, command, refusal, attempts):
    port = smtp(Refusing(command, refusal))
    notifier = EmailNotifier(
        "127.0.0.1", port=port, tls="none", sender="a@example.com", to=["b@example.com"]
    )
    tries, error = send_with_retry(notifier, alert_message(), FAST)
    assert tries == attempts and error.recoverable == (attempts > 1)
    assert refusal[:3] in str(error)


def test_a_recipient_refused_while_others_get_it_is_a_recorded_failure(smtp):
    mailbox = Refusing("RCPT", "550 5.1.1 no such user", only="oncall@example.com")
    port = smtp(mailbox)
    notifier = EmailNotifier(
        "127.0.0.1",
        port=port,
        tls="none",
        sender="a@example.com",
        to=["lead@example.com", "oncall@example.com"],
    )
    tries, error = send_with_retry(notifier, alert_message(), FAST)
    assert [e.rcpt_tos for e in mailbox.envelopes] == [["lead@example.com"]]  # sent once
    assert tries == 1 and not error.recoverable  # a retry would send it to lead@ again
    assert "oncall@example.com" in str(error) and "550" in str(error)


def test_transient_4xx_is_retried_permanent_5xx_is_not(smtp):
    port = smtp(Mailbox(reply="451 try again later"))
    notifier = EmailNotifier(
        "127.0.0.1", port=port, tls="none", sender="a@example.com", to=["b@example.com"]
    )
    attempts, error = send_with_retry(notifier, alert_message(), FAST)
    assert attempts == 3 and error.recoverable and "451" in str(error)
    port = smtp(Mailbox(reply="554 rejected"))
    notifier = EmailNotifier(
        "127.0.0.1", port=port, tls="none", sender="a@example.com", to=["b@example.com"]
    )
    attempts, error = send_with_retry(notifier, alert_message(), FAST)
    assert attempts == 1 and not error.recoverable


def test_email_from_environment_and_missing_settings_named():
    env = {
        "TRIPWIRE_SMTP_HOST": "127.0.0.1",
        "TRIPWIRE_SMTP_PORT": "2525",
        "TRIPWIRE_SMTP_TLS": "none",
        "TRIPWIRE_SMTP_PASSWORD": "hunter2",
        "TRIPWIRE_SMTP_USER": "bot",
        "TRIPWIRE_EMAIL_FROM": "t@example.com",
        "TRIPWIRE_EMAIL_TO": "a@example.com, b@example.com",
    }
    (_, route) = build_routes(parse_config({}), env)
    mail = route.notifier
    assert (mail.host, mail.port, mail.tls, mail.to) == (
        "127.0.0.1",
        2525,
        "none",
        ["a@example.com", "b@example.com"],
    )
    assert "hunter2" not in repr(mail)


def test_email_from_the_environment_names_the_missing_variable(tmp_path):
    path = tmp_path / "tripwire.toml"
    path.write_text("[engine]\ninterval_s = 5\n")  # a file, but no [[notifiers]]
    env = {"TRIPWIRE_SMTP_HOST": "smtp.example.com", "TRIPWIRE_EMAIL_TO": "a@example.com"}
    with pytest.raises(ConfigError) as err:
        build_routes(load_config(path), env)
    assert str(err.value) == (
        "TRIPWIRE_EMAIL_FROM: not set; email configured from the environment "
        "(no [[notifiers]] in a file) needs it"
    )
    env = {"TRIPWIRE_SMTP_HOST": "smtp.example.com", "TRIPWIRE_SMTP_TLS": "tls"}
    with pytest.raises(ConfigError) as err:
        build_routes(load_config(path), env)
    assert str(err.value).startswith("TRIPWIRE_EMAIL_FROM, TRIPWIRE_EMAIL_TO: not set;")
    # Written in the file, the entry is what the error names.
    path.write_text('[[notifiers]]\nkind = "email"\nto = ["a@example.com"]\n')
    with pytest.raises(ConfigError) as err:
        build_routes(load_config(path), {"TRIPWIRE_SMTP_HOST": "smtp.example.com"})
    assert str(err.value) == "notifiers[0]: kind 'email' needs sender / $TRIPWIRE_EMAIL_FROM"
    env = {**env, "TRIPWIRE_EMAIL_FROM": "t@example.com", "TRIPWIRE_EMAIL_TO": "a@example.com"}
    with pytest.raises(ConfigError) as err:
        build_routes(parse_config({}), env)
    assert str(err.value).startswith("TRIPWIRE_SMTP_TLS: must be one of starttls, ssl, none")


PLAIN_LOGIN_ENV = {
    "TRIPWIRE_SMTP_HOST": "smtp.example.com",
    "TRIPWIRE_SMTP_TLS": "none",
    "TRIPWIRE_SMTP_USER": "bot",
    "TRIPWIRE_SMTP_PASSWORD": "SmtpS3cret",
    "TRIPWIRE_EMAIL_FROM": "t@example.com",
    "TRIPWIRE_EMAIL_TO": "a@example.com",
}


def test_a_login_without_tls_is_refused_except_to_loopback(smtp):
    with pytest.raises(ConfigError) as err:
        build_routes(parse_config({}), PLAIN_LOGIN_ENV)
    assert str(err.value).startswith("TRIPWIRE_SMTP_TLS: 'none' would send the password")
    assert "smtp.example.com" in str(err.value) and "SmtpS3cret" not in str(err.value)
    in_file = {"notifiers": [{"kind": "email", "host": "mail.example.com", "tls": "none"}]}
    with pytest.raises(ConfigError, match=r"^notifiers\[0\]: TRIPWIRE_SMTP_TLS: 'none'"):
        build_routes(parse_config(in_file), PLAIN_LOGIN_ENV)
    # Without a login (a relay such as Mailpit) or with TLS, it is built.
    no_login = {**PLAIN_LOGIN_ENV, "TRIPWIRE_SMTP_USER": "", "TRIPWIRE_SMTP_PASSWORD": ""}
    assert len(build_routes(parse_config({}), no_login)) == 2
    assert len(build_routes(parse_config({}), {**PLAIN_LOGIN_ENV, "TRIPWIRE_SMTP_TLS": "ssl"})) == 2
    # To a relay on this machine the password stays on this machine: the login goes through.
    received = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        received.append(auth_data.password)
        return AuthResult(success=True)

    port = smtp(Mailbox(), authenticator=authenticator, auth_require_tls=False)
    local = {**PLAIN_LOGIN_ENV, "TRIPWIRE_SMTP_HOST": "127.0.0.1", "TRIPWIRE_SMTP_PORT": str(port)}
    (_, route) = build_routes(parse_config({}), local)
    assert send_with_retry(route.notifier, alert_message(), FAST) == (1, None)
    assert received == [b"SmtpS3cret"]


def test_the_password_never_crosses_the_network_unencrypted():
    """A server reached over the network that offers AUTH without TLS never sees the password."""
    outward = outward_address()
    if outward is None:
        pytest.skip("this machine has no address but loopback")
    received = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        received.append(auth_data.password)
        return AuthResult(success=True)

    with socket.socket() as probe:
        probe.bind((outward, 0))
        port = probe.getsockname()[1]
    mailbox = Mailbox()
    controller = Controller(
        mailbox, hostname=outward, port=port, authenticator=authenticator, auth_require_tls=False
    )
    controller.start()
    try:
        try:
            notifier = EmailNotifier(outward, port=port, tls="none", user="bot",
                                     password="SmtpS3cret", sender="t@example.com",
                                     to=["a@example.com"])  # fmt: skip
            send_with_retry(notifier, alert_message(), FAST)
        except ValueError as exc:
            assert "TRIPWIRE_SMTP_TLS" in str(exc) and "SmtpS3cret" not in str(exc)
    finally:
        controller.stop()
    assert received == [] and mailbox.messages == []
