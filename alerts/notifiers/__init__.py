"""Notifiers, and building them from the configuration and the environment.

>>> from alerts.config import Config
>>> [n.name for n in build_notifiers(Config(), env={})]
['log']
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from alerts.config import SEVERITY_RANK, Config, ConfigError, NotifierSettings
from alerts.notifiers.base import Notifier, NotifyError, check_url
from alerts.notifiers.console import ConsoleNotifier
from alerts.notifiers.email import EmailNotifier
from alerts.notifiers.webhook import WebhookNotifier

ENV_URLS = {"slack": "TRIPWIRE_SLACK_WEBHOOK_URL", "webhook": "TRIPWIRE_WEBHOOK_URL"}


@dataclass(frozen=True)
class Route:
    """Which alerts go to a notifier."""

    notifier: Notifier
    min_severity: str = "info"
    projects: tuple[str, ...] | None = None

    def accepts(self, severity: str, project: str) -> bool:
        if SEVERITY_RANK.get(severity, 0) < SEVERITY_RANK[self.min_severity]:
            return False
        return self.projects is None or project in self.projects


def _env_settings(env: Mapping[str, str]) -> list[NotifierSettings]:
    found = [NotifierSettings(kind="log", min_severity="info")]
    if env.get("TRIPWIRE_SLACK_WEBHOOK_URL"):
        found.append(NotifierSettings(kind="slack"))
    if env.get("TRIPWIRE_WEBHOOK_URL"):
        found.append(NotifierSettings(kind="webhook"))
    if env.get("TRIPWIRE_SMTP_HOST") or env.get("TRIPWIRE_EMAIL_TO"):
        found.append(NotifierSettings(kind="email"))
    return found


def _build(index: int, s: NotifierSettings, env: Mapping[str, str], timeout_s: float) -> Notifier:
    where = f"notifiers[{index}]"
    name = s.name or s.kind
    if s.kind == "log":
        return ConsoleNotifier(name)
    if s.kind in ENV_URLS:
        variable = s.url_env or ENV_URLS[s.kind]
        url = env.get(variable)
        if not url:
            raise ConfigError(f"{where}: kind {s.kind!r} needs the URL in ${variable}")
        try:
            check_url(url, variable)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if s.kind == "webhook":
            return WebhookNotifier(url, name=name, timeout_s=timeout_s, variable=variable)
        from alerts.notifiers.slack import SlackNotifier

        return SlackNotifier(url, name=name, timeout_s=timeout_s, variable=variable)
    host = s.host or env.get("TRIPWIRE_SMTP_HOST")
    sender = s.sender or env.get("TRIPWIRE_EMAIL_FROM")
    to = s.to or [a.strip() for a in env.get("TRIPWIRE_EMAIL_TO", "").split(",") if a.strip()]
    tls = s.tls or env.get("TRIPWIRE_SMTP_TLS", "starttls").lower()
    missing = [
        key
        for key, value in (
            ("host / $TRIPWIRE_SMTP_HOST", host),
            ("sender / $TRIPWIRE_EMAIL_FROM", sender),
            ("to / $TRIPWIRE_EMAIL_TO", to),
        )
        if not value
    ]
    if missing:
        raise ConfigError(f"{where}: kind 'email' needs {', '.join(missing)}")
    port = s.port
    if port is None and env.get("TRIPWIRE_SMTP_PORT"):
        try:
            port = int(env["TRIPWIRE_SMTP_PORT"])
        except ValueError:
            raise ConfigError("TRIPWIRE_SMTP_PORT: must be a port number") from None
    try:
        return EmailNotifier(
            host,
            sender=sender,
            to=to,
            port=port,
            tls=tls,
            user=env.get("TRIPWIRE_SMTP_USER") or None,
            password=env.get("TRIPWIRE_SMTP_PASSWORD") or None,
            name=name,
            timeout_s=timeout_s,
        )
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def build_routes(config: Config, env: Mapping[str, str] | None = None) -> list[Route]:
    """The configured notifiers with their routing; secrets are read from ``env``."""
    env = os.environ if env is None else env
    settings = config.notifiers if config.notifiers is not None else _env_settings(env)
    routes = []
    names = set()
    for i, s in enumerate(settings):
        notifier = _build(i, s, env, config.retry.timeout_s)
        if notifier.name in names:
            raise ConfigError(f"notifiers[{i}].name: {notifier.name!r} is used twice")
        names.add(notifier.name)
        projects = tuple(s.projects) if s.projects is not None else None
        routes.append(Route(notifier, s.min_severity, projects))
    return routes


def build_notifiers(config: Config, env: Mapping[str, str] | None = None) -> list[Notifier]:
    """Just the notifiers of :func:`build_routes`."""
    return [r.notifier for r in build_routes(config, env)]


__all__ = [
    "ConsoleNotifier",
    "EmailNotifier",
    "Notifier",
    "NotifyError",
    "Route",
    "WebhookNotifier",
    "build_notifiers",
    "build_routes",
]
