"""The notifier contract: one method, and errors that say whether a retry can help."""

from __future__ import annotations

import ipaddress
import ssl
import urllib.error
from abc import ABC, abstractmethod
from urllib.parse import urlsplit

from alerts.message import Message


class NotifyError(Exception):
    """A failed delivery. ``recoverable``: could the same message succeed if sent again later?

    ``retry_after`` is the server's requested wait in seconds (HTTP 429), when it gave one.
    """

    def __init__(self, message: str, *, recoverable: bool, retry_after: float | None = None):
        super().__init__(message)
        self.recoverable = recoverable
        self.retry_after = retry_after


class Notifier(ABC):
    """Sends a :class:`Message` somewhere. Subclasses keep secrets out of ``repr`` and errors.

    >>> class Print(Notifier):
    ...     def send(self, message):
    ...         print(message.subject)
    >>> Print("print").send(Message("test", "info", "hello", "", ""))
    hello
    """

    retries = True
    """Whether failed sends are retried (the console notifier cannot fail usefully)."""

    def __init__(self, name: str):
        self.name = name

    @abstractmethod
    def send(self, message: Message) -> None:
        """Deliver one message or raise :class:`NotifyError`."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def http_status_error(status: int, what: str, retry_after: float | None = None) -> NotifyError:
    """Classify an HTTP failure: 408, 429 and 5xx may pass later; other 4xx will not."""
    recoverable = status in (408, 429) or status >= 500
    return NotifyError(f"{what}: HTTP {status}", recoverable=recoverable, retry_after=retry_after)


def network_error(what: str, exc: BaseException) -> NotifyError:
    """A request that got no HTTP answer: retried, except a certificate that fails
    verification, which only a change of settings fixes. Shows the reason, never the URL.

    >>> network_error("webhook https://example.com/…", ConnectionRefusedError(111, "refused"))
    NotifyError('webhook https://example.com/…: [Errno 111] refused')
    """
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, ssl.SSLCertVerificationError):
        return NotifyError(
            f"{what}: TLS failed (certificate verify failed: {reason.verify_message})",
            recoverable=False,
        )
    if isinstance(exc, (urllib.error.URLError, OSError)):
        return NotifyError(f"{what}: {reason}", recoverable=True)
    # Anything else may quote the request (http.client's InvalidURL quotes the path).
    return NotifyError(f"{what}: {type(exc).__name__}", recoverable=True)


def parse_retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def check_url(url: str, variable: str) -> str:
    """Accept https URLs, and http only to a loopback address; errors never show the URL.
    Returns it without surrounding whitespace.

    >>> check_url("http://127.0.0.1:8080/hook", "TRIPWIRE_WEBHOOK_URL")
    'http://127.0.0.1:8080/hook'
    >>> check_url("http://example.com/hook", "TRIPWIRE_WEBHOOK_URL")
    Traceback (most recent call last):
    ...
    ValueError: TRIPWIRE_WEBHOOK_URL: must be an https URL (http is allowed only to loopback addresses)
    """
    url = url.strip()  # a secret mounted from a file often ends in a newline
    if any(c.isspace() or not c.isprintable() for c in url):
        # urllib would refuse it at every send, quoting the path that holds the secret token.
        raise ValueError(f"{variable}: holds a space or control character; not a valid URL")
    parts = urlsplit(url)
    if not parts.hostname or parts.scheme not in ("http", "https"):
        raise ValueError(f"{variable}: not a valid http(s) URL")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ValueError(
            f"{variable}: must be an https URL (http is allowed only to loopback addresses)"
        )
    return url


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine (``localhost`` or a loopback address), so that
    what is sent to it never crosses a network."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def redact(url: str) -> str:
    """Scheme and host only: webhook URLs carry their secret in the path.

    >>> redact("https://hooks.slack.com/services/T0/B0/XYZ")
    'https://hooks.slack.com/…'
    >>> redact("http://user:pw@127.0.0.1:18099/hook?token=XYZ")
    'http://127.0.0.1:18099/…'
    """
    parts = urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # not a number: leave it out
        port = ""
    return f"{parts.scheme}://{parts.hostname}{port}/…"
