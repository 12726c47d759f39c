"""tripwire.toml: typed validation, errors that name the dotted key, secrets from the env only."""

from __future__ import annotations

import pytest

from alerts.config import ConfigError, load_config, parse_config
from alerts.notifiers import build_routes

GOOD = """
[engine]
interval_s = 5
repeat_every_steps = 200

[retry]
max_attempts = 2

[dashboard]
url = "https://tripwire.example.com"

[predictors.sa_collapse]
excess = 0.6
for_checks = 4

[predictors.grad_norm_spike]
z_threshold = 8.0
severity = "critical"

[predictors.stalled]
enabled = false

[[notifiers]]
kind = "log"
min_severity = "info"

[[notifiers]]
kind = "slack"
name = "oncall"
min_severity = "critical"
projects = ["prod"]
url_env = "ONCALL_SLACK_URL"
"""


def test_a_full_file_loads_and_overrides_defaults(tmp_path):
    path = tmp_path / "tripwire.toml"
    path.write_text(GOOD)
    cfg = load_config(path)
    rules = cfg.rules()
    assert cfg.engine.interval_s == 5 and cfg.retry.max_attempts == 2
    assert rules["sa_collapse"].params["excess"] == 0.6 and rules["sa_collapse"].for_checks == 4
    assert rules["sa_collapse"].params["min_imbalance"] == 0.6  # default kept
    assert rules["grad_norm_spike"].severity == "critical"
    assert "stalled" not in cfg.enabled_rules()
    env = {"ONCALL_SLACK_URL": "https://hooks.slack.com/services/T/B/SECRET"}
    routes = build_routes(cfg, env)
    assert [(r.notifier.name, r.min_severity, r.projects) for r in routes] == [
        ("log", "info", None),
        ("oncall", "critical", ("prod",)),
    ]
    assert "SECRET" not in repr(routes[1].notifier)
    assert cfg.dashboard_url({}) == "https://tripwire.example.com"


@pytest.mark.parametrize(
    "data, where",
    [
        ({"engine": {"interval_s": 0}}, "engine.interval_s: Input should be greater than 0"),
        (
            {"engine": {"interval_s": 1e300}},
            "engine.interval_s: Input should be less than or equal to 86400",
        ),
        ({"engine": {"intervall_s": 3}}, "engine.intervall_s: unknown key"),
        ({"predictors": {"sa_colapse": {}}}, "predictors.sa_colapse: unknown predictor; valid:"),
        (
            {"predictors": {"sa_collapse": {"treshold": 1}}},
            "predictors.sa_collapse.treshold: unknown key; valid: enabled, severity, for_checks",
        ),
        (
            {"predictors": {"sa_collapse": {"excess": "high"}}},
            "predictors.sa_collapse.excess: must be a finite number",
        ),
        (
            {"predictors": {"sa_collapse": {"excess": float("nan")}}},
            "predictors.sa_collapse.excess: must be a finite number",
        ),
        (
            {"predictors": {"weight_growth": {"window_checks": 2.5}}},
            "predictors.weight_growth.window_checks: must be a whole number",
        ),
        (
            {"predictors": {"loss_spike": {"severity": "urgent"}}},
            "predictors.loss_spike.severity: Input should be 'info', 'warning' or 'critical'",
        ),
        ({"predictors": {"loss_spike": {"for_checks": 0}}}, "predictors.loss_spike.for_checks"),
        (
            {"predictors": {"rank_collapse": {"falling": "yes"}}},
            "predictors.rank_collapse.falling: must be true or false",
        ),
        ({"notifiers": [{"kind": "log"}, {"kind": "pager"}]}, "notifiers[1].kind: Input should be"),
        (
            {"notifiers": [{"kind": "slack", "url": "https://x"}]},
            "notifiers[0].url: secrets are read from the environment only",
        ),
        ({"notifiers": [{"kind": "email", "password": "x"}]}, "notifiers[0].password: secrets"),
    ],
)
def test_errors_name_the_dotted_key(data, where):
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert str(err.value).startswith(where), str(err.value)


def test_broken_toml_names_the_file(tmp_path):
    path = tmp_path / "tripwire.toml"
    path.write_text("[engine\ninterval_s = 3")
    with pytest.raises(ConfigError, match="tripwire.toml: not valid TOML"):
        load_config(path)
    path.write_text("[engine]\ninterval_s = -1\n")
    with pytest.raises(ConfigError, match=r"tripwire.toml: engine.interval_s"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_found_via_env_then_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRIPWIRE_CONFIG", raising=False)
    assert load_config().engine.interval_s == 10  # no file: defaults
    (tmp_path / "tripwire.toml").write_text("[engine]\ninterval_s = 3\n")
    assert load_config().engine.interval_s == 3
    other = tmp_path / "other.toml"
    other.write_text("[engine]\ninterval_s = 7\n")
    monkeypatch.setenv("TRIPWIRE_CONFIG", str(other))
    assert load_config().engine.interval_s == 7
    assert load_config(tmp_path / "tripwire.toml").engine.interval_s == 3


def test_missing_secret_names_the_variable():
    cfg = parse_config({"notifiers": [{"kind": "webhook"}]})
    with pytest.raises(
        ConfigError, match=r"notifiers\[0\]: kind 'webhook' needs the URL in \$TRIPWIRE_WEBHOOK_URL"
    ):
        build_routes(cfg, {})


def test_the_example_in_docs_alerts_md_is_a_valid_config():
    import re
    from pathlib import Path

    from alerts.config import tomllib  # tomli before Python 3.11

    text = (Path(__file__).resolve().parents[2] / "docs" / "alerts.md").read_text("utf-8")
    example = re.search(r"```toml\n(.*?)```", text, re.S).group(1)
    config = parse_config(tomllib.loads(example))
    assert config.rules()["attention_logits"].params["max_logit"] == 100.0
    assert config.rules()["update_size"].enabled
