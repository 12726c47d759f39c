"""``tripwire.toml``: rules, thresholds, notifiers and routing, validated on load.

Found via ``--config``, else ``$TRIPWIRE_CONFIG``, else ``./tripwire.toml``; with no file the
defaults apply and the environment alone configures the notifiers. Secrets (webhook URLs,
the SMTP password) come from the environment only and are never printed.

>>> cfg = load_config(None, search=False)
>>> cfg.rules()["sa_collapse"].for_checks
3
>>> parse_config({"predictors": {"sa_collapse": {"excess": -1}}})
Traceback (most recent call last):
...
alerts.config.ConfigError: predictors.sa_collapse.excess: must be a finite number >= 0 (got -1)
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from alerts.predictors import PREDICTORS
from storage.alerts import SEVERITIES
from storage.entities import LAYER_STATISTICS

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ENV_CONFIG = "TRIPWIRE_CONFIG"
DEFAULT_FILE = "tripwire.toml"
Severity = Literal["info", "warning", "critical"]
SEVERITY_RANK = {severity: rank for rank, severity in enumerate(SEVERITIES)}


class ConfigError(ValueError):
    """A bad configuration; the message starts with the dotted key at fault."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class EngineSettings(_Strict):
    """How the engine evaluates (``[engine]``)."""

    interval_s: float = Field(10.0, gt=0, le=86_400)
    """Seconds between scheduler ticks."""
    misfire_grace_s: float = Field(30.0, gt=0, le=86_400)
    """A tick late by more than this is skipped (ticks never pile up)."""
    repeat_every_steps: int = Field(1000, ge=1)
    """A firing alert is re-sent after this many training steps."""
    resolve_after: int = Field(3, ge=1)
    """Evaluations in a row without the condition before a firing alert resolves."""
    max_steps_per_tick: int = Field(20_000, ge=1)
    """Steps of one run evaluated per tick at most (a backlog catches up over ticks)."""
    finished_grace_s: float = Field(600.0, ge=0)
    """Runs that ended this recently are still evaluated when first seen."""


class RetrySettings(_Strict):
    """Delivery retries with exponential backoff (``[retry]``)."""

    max_attempts: int = Field(4, ge=1, le=100)
    """Tries per delivery, the first included."""
    initial_backoff_s: float = Field(1.0, ge=0)
    """Wait before the second try; doubles each time."""
    max_backoff_s: float = Field(30.0, ge=0)
    """Longest wait between tries (also caps a server's Retry-After)."""
    timeout_s: float = Field(10.0, gt=0)
    """Network timeout of one try."""


class RuleSettings(BaseModel):
    """One predictor's rule (``[predictors.NAME]``): common keys plus its own parameters."""

    model_config = ConfigDict(extra="allow", frozen=True)
    enabled: bool = True
    """Evaluate this predictor at all."""
    severity: Severity | None = None
    """Severity of its alerts (default: the predictor's)."""
    for_checks: int | None = Field(None, ge=1)
    """Evaluations in a row the condition must hold before the alert fires."""
    resolve_after: int | None = Field(None, ge=1)
    """Evaluations in a row without it before a firing alert resolves."""


class NotifierSettings(_Strict):
    """One notifier (``[[notifiers]]``); secrets are read from the environment."""

    kind: Literal["log", "slack", "webhook", "email"]
    """Which notifier."""
    name: str | None = None
    """Name in the delivery records (default: the kind)."""
    min_severity: Severity = "warning"
    """Only alerts at least this severe go here."""
    projects: list[str] | None = None
    """Only alerts of runs in these projects (default: all)."""
    url_env: str | None = None
    """slack/webhook: environment variable holding the URL (default TRIPWIRE_SLACK_WEBHOOK_URL /
    TRIPWIRE_WEBHOOK_URL)."""
    host: str | None = None
    """email: SMTP host (default $TRIPWIRE_SMTP_HOST)."""
    port: int | None = Field(None, ge=1, le=65535)
    """email: SMTP port (default $TRIPWIRE_SMTP_PORT, else 587/465/25 by ``tls``)."""
    tls: Literal["starttls", "ssl", "none"] | None = None
    """email: transport security (default $TRIPWIRE_SMTP_TLS, else starttls)."""
    sender: str | None = None
    """email: From address (default $TRIPWIRE_EMAIL_FROM)."""
    to: list[str] | None = None
    """email: recipients (default $TRIPWIRE_EMAIL_TO, comma-separated)."""


class DashboardSettings(_Strict):
    url: str | None = None
    """Base URL of the dashboard for links in messages (default $TRIPWIRE_DASHBOARD_URL)."""


class Config(_Strict):
    """The whole ``tripwire.toml``."""

    engine: EngineSettings = EngineSettings()
    retry: RetrySettings = RetrySettings()
    dashboard: DashboardSettings = DashboardSettings()
    predictors: dict[str, RuleSettings] = Field(default_factory=dict)
    notifiers: list[NotifierSettings] | None = None
    """None: the log notifier plus whatever the environment configures."""

    def rules(self) -> dict[str, Rule]:
        """Every registered predictor's effective rule (defaults + overrides), by name."""
        return {name: _rule(name, self.predictors.get(name)) for name in PREDICTORS}

    def enabled_rules(self) -> dict[str, Rule]:
        return {n: r for n, r in self.rules().items() if r.enabled}

    def dashboard_url(self, env: dict | None = None) -> str | None:
        env = os.environ if env is None else env
        return self.dashboard.url or env.get("TRIPWIRE_DASHBOARD_URL") or None


@dataclass(frozen=True)
class Rule:
    """A predictor with its effective settings."""

    name: str
    enabled: bool
    severity: str
    for_checks: int
    resolve_after: int | None
    params: dict[str, Any]


def _rule(name: str, settings: RuleSettings | None) -> Rule:
    spec = PREDICTORS[name]
    settings = settings or RuleSettings()
    default = getattr(spec, "enabled", True)
    enabled = settings.enabled if "enabled" in settings.model_fields_set else default
    return Rule(
        name=name,
        enabled=enabled,
        severity=settings.severity or spec.severity,
        for_checks=settings.for_checks or spec.for_checks,
        resolve_after=settings.resolve_after or spec.resolve_after,
        params={**spec.params, **(settings.model_extra or {})},
    )


LAYER_STAT_PARAMS = frozenset({"stat", "growth_stat", "layer_keys"})
"""Predictor parameters that name per-layer statistics: each must be one of
``storage.entities.LAYER_STATISTICS`` (a misspelled one would leave the rule without data)."""
SCALAR_PARAMS = frozenset({"key", "scalar_keys"})
"""Predictor parameters that name scalars the training loop logs (``loss``, ``grad_norm`` or the
user's own): an open set, so only names that cannot be one (empty) are refused."""


def _unknown(where: str, what: str, valid: Iterable[str]) -> ConfigError:
    """The error for a name that is not one of ``valid``, listing them.

    >>> raise _unknown("engine.interval", "key", ["interval_s", "misfire_grace_s"])
    Traceback (most recent call last):
    ...
    alerts.config.ConfigError: engine.interval: unknown key; valid: interval_s, misfire_grace_s
    """
    return ConfigError(f"{where}: unknown {what}; valid: {', '.join(valid)}")


def _check_names(where: str, key: str, value: str | list[str]) -> None:
    names = value if isinstance(value, list) else [value]
    for i, name in enumerate(names):
        at = f"{where}[{i}]" if isinstance(value, list) else where
        if key in LAYER_STAT_PARAMS and name not in LAYER_STATISTICS:
            raise _unknown(at, f"layer statistic {name!r}", LAYER_STATISTICS)
        if key in SCALAR_PARAMS and not name.strip():
            raise ConfigError(f"{at}: must name a scalar the training loop logs (got {name!r})")


def _check_param(where: str, default: Any, value: Any) -> None:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: must be true or false (got {value!r})")
    elif isinstance(default, (int, float)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value < 0:
            raise ConfigError(f"{where}: must be a finite number >= 0 (got {value!r})")
        if isinstance(default, int) and not isinstance(value, int):
            raise ConfigError(f"{where}: must be a whole number (got {value!r})")
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: must be a string (got {value!r})")
    elif isinstance(default, list):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: must be a list of strings (got {value!r})")


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _keys_at(loc: tuple) -> list[str]:
    """The keys accepted beside the last part of a validation error's location."""
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        if isinstance(part, str) and part in model.model_fields:
            model = _model_in(model.model_fields[part].annotation) or model
    return list(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The settings class inside an annotation such as ``list[NotifierSettings] | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if found := _model_in(arg):
            return found
    return None


_SECRET_KEYS = {"url", "webhook_url", "password", "smtp_password", "token"}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_config(data: dict) -> Config:
    """Validate a parsed TOML document; a :class:`ConfigError` names the first bad key."""
    for i, notifier in enumerate(data.get("notifiers") or []):
        if isinstance(notifier, dict):
            for key in _SECRET_KEYS & set(notifier):
                raise ConfigError(
                    f"notifiers[{i}].{key}: secrets are read from the environment only; "
                    "remove it from the file (see url_env, TRIPWIRE_SMTP_PASSWORD)"
                )
            url_env = notifier.get("url_env")
            if isinstance(url_env, str) and not _ENV_NAME.fullmatch(url_env):
                # Never echoed: it is most likely the URL itself, pasted in place of its variable.
                raise ConfigError(
                    f"notifiers[{i}].url_env: must name an environment variable (letters, "
                    "digits, _), e.g. TRIPWIRE_PAGER_SLACK_URL, which holds the URL; secrets "
                    "are read from the environment only"
                )
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = _dotted(tuple(err["loc"])) or "(top level)"
        if err["type"] == "extra_forbidden":
            raise _unknown(where, "key", _keys_at(tuple(err["loc"]))) from None
        raise ConfigError(f"{where}: {err['msg']}") from None
    for name, rule in config.predictors.items():
        if name not in PREDICTORS:
            raise _unknown(f"predictors.{name}", "predictor", sorted(PREDICTORS))
        defaults = PREDICTORS[name].params
        for key, value in (rule.model_extra or {}).items():
            where = f"predictors.{name}.{key}"
            if key not in defaults:
                common = ["enabled", "severity", "for_checks", "resolve_after"]
                raise _unknown(where, "key", [*common, *sorted(defaults)])
            _check_param(where, defaults[key], value)
            _check_names(where, key, value)
            if key in PREDICTORS[name].minimums:
                lowest, why = PREDICTORS[name].minimums[key]
                if value < lowest:
                    raise ConfigError(
                        f"{where}: must be at least {lowest:g}: {why} (got {value!r})"
                    )
    return config


def config_path(path: str | os.PathLike | None, *, search: bool = True) -> Path | None:
    """The file to load: ``path``, else ``$TRIPWIRE_CONFIG``, else ``./tripwire.toml`` if present."""
    if path:
        return Path(path)
    if not search:
        return None
    if os.environ.get(ENV_CONFIG):
        return Path(os.environ[ENV_CONFIG])
    local = Path.cwd() / DEFAULT_FILE
    return local if local.exists() else None


def load_config(path: str | os.PathLike | None = None, *, search: bool = True) -> Config:
    """Load and validate the configuration (defaults when there is no file).

    >>> load_config("tripwire.toml")        # doctest: +SKIP
    Config(engine=EngineSettings(interval_s=10.0, ...), ...)
    """
    found = config_path(path, search=search)
    if found is None:
        return Config()
    try:
        text = found.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{found}: cannot read the configuration ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{found}: not UTF-8 text (a TOML file must be UTF-8)") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{found}: not valid TOML ({exc})") from None
    except RecursionError:
        raise ConfigError(f"{found}: not valid TOML (nested too deeply)") from None
    try:
        return parse_config(data)
    except ConfigError as exc:
        raise ConfigError(f"{found}: {exc}") from None
