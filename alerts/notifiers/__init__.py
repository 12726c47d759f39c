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


def _error(where: str | None, message: str) -> ConfigError:
    # A notifier the environment alone configured has no [[notifiers]] entry to name.
    return ConfigError(f"{where}: {message}" if where else message)


def _build(
    where: str | None, s: NotifierSettings, env: Mapping[str, str], timeout_s: float
) -> Notifier:
    name = s.name or s.kind
    if s.kind == "log":
        return ConsoleNotifier(name)
    if s.kind in ENV_URLS:
        variable = s.url_env or ENV_URLS[s.kind]
        url = env.get(variable)
        if not url:
            raise _error(where, f"kind {s.kind!r} needs the URL in ${variable}")
        try:
            check_url(url, variable)
        except ValueError as exc:
            raise _error(where, str(exc)) from None
        if s.kind == "webhook":
            return WebhookNotifier(url, name=name, timeout_s=timeout_s, variable=variable)
        from alerts.notifiers.slack import SlackNotifier

        return SlackNotifier(url, name=name, timeout_s=timeout_s, variable=variable)
    host = s.host or env.get("TRIPWIRE_SMTP_HOST")
    sender = s.sender or env.get("TRIPWIRE_EMAIL_FROM")
    to = s.to or [a.strip() for a in env.get("TRIPWIRE_EMAIL_TO", "").split(",") if a.strip()]
    tls = s.tls or env.get("TRIPWIRE_SMTP_TLS", "starttls").lower()
    missing = [
        (key, variable)
        for key, variable, value in (
            ("host", "TRIPWIRE_SMTP_HOST", host),
            ("sender", "TRIPWIRE_EMAIL_FROM", sender),
            ("to", "TRIPWIRE_EMAIL_TO", to),
        )
        if not value
    ]
    if missing and where is None:
        variables = ", ".join(variable for _, variable in missing)
        raise ConfigError(
            f"{variables}: not set; email configured from the environment "
            f"(no [[notifiers]] in a file) needs {'it' if len(missing) == 1 else 'them'}"
        )
    if missing:
        needs = ", ".join(f"{key} / ${variable}" for key, variable in missing)
        raise ConfigError(f"{where}: kind 'email' needs {needs}")
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
        raise _error(where, str(exc)) from None


def build_routes(config: Config, env: Mapping[str, str] | None = None) -> list[Route]:
    """The configured notifiers with their routing; secrets are read from ``env``.

    Without ``[[notifiers]]`` the environment says which there are, and an error names the
    variable at fault rather than a ``notifiers[i]`` the user never wrote:

    >>> build_routes(Config(), env={"TRIPWIRE_SMTP_HOST": "smtp.example.com"})
    Traceback (most recent call last):
    ...
    alerts.config.ConfigError: TRIPWIRE_EMAIL_FROM, TRIPWIRE_EMAIL_TO: not set; email configured from the environment (no [[notifiers]] in a file) needs them
    """
    env = os.environ if env is None else env
    from_file = config.notifiers is not None
    settings = config.notifiers if from_file else _env_settings(env)
    routes = []
    names = set()
    for i, s in enumerate(settings):
        where = f"notifiers[{i}]" if from_file else None
        notifier = _build(where, s, env, config.retry.timeout_s)
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
