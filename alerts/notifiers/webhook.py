"""Generic JSON webhook: POSTs the message payload (``Message.payload`` plus subject and text)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from alerts.message import Message
from alerts.notifiers.base import (
    Notifier,
    check_url,
    http_status_error,
    network_error,
    parse_retry_after,
    redact,
)


class WebhookNotifier(Notifier):
    """POST ``{"subject", "text", ...payload}`` as JSON to a URL (from the environment).

    >>> WebhookNotifier("https://example.com/hook")
    WebhookNotifier('webhook' → https://example.com/…)
    """

    def __init__(
        self,
        url: str,
        *,
        name: str = "webhook",
        timeout_s: float = 10.0,
        variable: str = "TRIPWIRE_WEBHOOK_URL",
    ):
        super().__init__(name)
        self._url = check_url(url, variable)
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"WebhookNotifier({self.name!r} → {redact(self._url)})"

    def send(self, message: Message) -> None:
        body = json.dumps(
            {"subject": message.subject, "text": message.text, **message.payload}, default=str
        ).encode()
        request = urllib.request.Request(
            self._url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "tripwire"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            retry_after = parse_retry_after(exc.headers.get("Retry-After") if exc.headers else None)
            raise http_status_error(exc.code, f"webhook {redact(self._url)}", retry_after) from None
        except (urllib.error.URLError, OSError) as exc:
            raise network_error(f"webhook {redact(self._url)}", exc) from None
