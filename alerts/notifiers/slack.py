"""Slack incoming webhook, through ``slack_sdk`` (imported when a Slack notifier is built)."""

from __future__ import annotations

import logging

from alerts.message import Message
from alerts.notifiers.base import (
    Notifier,
    check_url,
    http_status_error,
    network_error,
    parse_retry_after,
    redact,
)

SEVERITY_EMOJI = {
    "critical": ":rotating_light:",
    "warning": ":warning:",
    "info": ":information_source:",
}
RESOLVED_EMOJI = ":white_check_mark:"
"""A resolution is good news, whatever the severity of what fired."""


def escape(text: str) -> str:
    """Slack's control characters as entities: a run or layer name cannot mention ``<!channel>``,
    link ``<https://…|here>`` or otherwise format the message.

    >>> escape("<!channel> & <https://evil.example|click>")
    '&lt;!channel&gt; &amp; &lt;https://evil.example|click&gt;'
    """
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class _Redact(logging.Filter):
    """Replaces the webhook URL in log records with its redacted form."""

    def __init__(self, url: str):
        super().__init__()
        self._url = url

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if self._url in text:
            record.msg, record.args = text.replace(self._url, redact(self._url)), ()
        return True


class SlackNotifier(Notifier):
    """Posts to a Slack incoming webhook (URL from ``TRIPWIRE_SLACK_WEBHOOK_URL``).

    >>> SlackNotifier("https://hooks.slack.com/services/T0/B0/XYZ")   # doctest: +SKIP
    SlackNotifier('slack' → https://hooks.slack.com/…)
    """

    def __init__(
        self,
        url: str,
        *,
        name: str = "slack",
        timeout_s: float = 10.0,
        variable: str = "TRIPWIRE_SLACK_WEBHOOK_URL",
    ):
        super().__init__(name)
        try:
            from slack_sdk.webhook import WebhookClient
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError(
                "the Slack notifier needs slack_sdk: pip install 'tripwire[alerts]'"
            ) from exc
        self._url = check_url(url, variable)
        # slack_sdk logs the full URL (the secret) at DEBUG: its records pass a redacting filter.
        sdk_log = logging.getLogger(f"tripwire.alerts.slack_sdk.{name}")
        sdk_log.addFilter(_Redact(self._url))
        # Retries are ours (tenacity, counted and recorded), not slack_sdk's.
        self._client = WebhookClient(
            self._url, timeout=max(1, int(timeout_s)), retry_handlers=[], logger=sdk_log
        )

    def __repr__(self) -> str:
        return f"SlackNotifier({self.name!r} → {redact(self._url)})"

    def send(self, message: Message) -> None:
        if message.event == "resolved":
            emoji = RESOLVED_EMOJI
        else:
            emoji = SEVERITY_EMOJI.get(message.severity, "")
        text = f"{emoji} *{escape(message.subject)}*\n{escape(message.text)}".strip()
        blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": text[:2900]}}]
        try:
            response = self._client.send(text=escape(message.subject), blocks=blocks)
        except Exception as exc:  # network errors: slack_sdk raises urllib's
            raise network_error(f"slack {redact(self._url)}", exc) from None
        if response.status_code != 200:
            retry_after = parse_retry_after((response.headers or {}).get("Retry-After"))
            raise http_status_error(response.status_code, f"slack {redact(self._url)}", retry_after)
