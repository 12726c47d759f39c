"""Email over SMTP (STARTTLS, SSL or plain), with a plain-text and an HTML body."""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage

from alerts.message import Message
from alerts.notifiers.base import Notifier, NotifyError, is_loopback

DEFAULT_PORTS = {"starttls": 587, "ssl": 465, "none": 25}


class EmailNotifier(Notifier):
    """Sends each message as a multipart (text + HTML) email.

    ``password`` comes from ``TRIPWIRE_SMTP_PASSWORD`` and never appears in ``repr`` or errors.
    A login (``user``) without TLS is refused unless ``host`` is a loopback address: the
    password would cross the network in clear text.
    ``ssl_context`` lets tests trust a self-signed certificate.

    >>> EmailNotifier("smtp.example.com", sender="t@example.com", to=["oncall@example.com"])
    EmailNotifier('email' → smtp.example.com:587 starttls, 1 recipient(s))
    """

    def __init__(
        self,
        host: str,
        *,
        sender: str,
        to: list[str],
        port: int | None = None,
        tls: str = "starttls",
        user: str | None = None,
        password: str | None = None,
        name: str = "email",
        timeout_s: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ):
        super().__init__(name)
        if tls not in DEFAULT_PORTS:
            raise ValueError(f"TRIPWIRE_SMTP_TLS: must be one of starttls, ssl, none (got {tls!r})")
        if not to:
            raise ValueError("TRIPWIRE_EMAIL_TO: at least one recipient is needed")
        if tls == "none" and user and not is_loopback(host):
            raise ValueError(
                f"TRIPWIRE_SMTP_TLS: 'none' would send the password unencrypted to {host}; "
                "use starttls or ssl (a login without TLS is allowed only to a loopback address)"
            )
        self.host = host
        self.port = port or DEFAULT_PORTS[tls]
        self.tls = tls
        self.sender = sender
        self.to = list(to)
        self.user = user
        self._password = password
        self.timeout_s = timeout_s
        self._context = ssl_context

    def __repr__(self) -> str:
        return (
            f"EmailNotifier({self.name!r} → {self.host}:{self.port} {self.tls}, "
            f"{len(self.to)} recipient(s))"
        )

    def _connect(self) -> smtplib.SMTP:
        context = self._context or ssl.create_default_context()
        if self.tls == "ssl":
            return smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout_s, context=context)
        smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout_s)
        if self.tls == "starttls":
            smtp.starttls(context=context)
        return smtp

    def send(self, message: Message) -> None:
        email = EmailMessage()
        # One line: a run name with a line break must neither add headers nor fail the send.
        email["Subject"] = " ".join(message.subject.split())
        email["From"] = self.sender
        email["To"] = ", ".join(self.to)
        email.set_content(message.text)
        email.add_alternative(f"<html><body>{message.html}</body></html>", subtype="html")
        where = f"smtp {self.host}:{self.port}"
        try:
            with self._connect() as smtp:
                if self.user:
                    smtp.login(self.user, self._password or "")
                refused = smtp.send_message(email)
        except smtplib.SMTPAuthenticationError as exc:
            raise NotifyError(
                f"{where}: authentication failed ({exc.smtp_code})", recoverable=False
            ) from None
        except smtplib.SMTPRecipientsRefused as exc:
            codes = sorted({code for code, _ in exc.recipients.values()})
            # Greylisting refuses recipients with 4xx for a while: only 5xx is for good.
            raise NotifyError(
                f"{where}: recipients refused ({', '.join(map(str, codes))})",
                recoverable=all(code < 500 for code in codes),
            ) from None
        except smtplib.SMTPResponseException as exc:
            # 4xx replies are transient by definition; 5xx are permanent.
            raise NotifyError(
                f"{where}: {exc.smtp_code} {exc.smtp_error[:200]!r}",
                recoverable=exc.smtp_code < 500,
            ) from None
        except ssl.SSLError as exc:
            raise NotifyError(f"{where}: TLS failed ({exc.reason})", recoverable=False) from None
        except smtplib.SMTPNotSupportedError as exc:
            # STARTTLS or AUTH the server does not offer: the settings are wrong, not the moment.
            raise NotifyError(f"{where}: {str(exc).rstrip('.')}", recoverable=False) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise NotifyError(f"{where}: {type(exc).__name__}: {exc}", recoverable=True) from None
        if refused:  # the others got it: a retry would send it to them again
            who = ", ".join(f"{address} ({code})" for address, (code, _) in sorted(refused.items()))
            raise NotifyError(f"{where}: sent, but refused for {who}", recoverable=False)
