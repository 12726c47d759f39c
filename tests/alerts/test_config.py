"""tripwire.toml: typed validation, errors that name the dotted key, secrets from the env only."""

from __future__ import annotations

import pytest

from alerts.config import (
    LAYER_STAT_PARAMS,
    SCALAR_PARAMS,
    ConfigError,
    load_config,
    parse_config,
)
from alerts.notifiers import build_routes
from alerts.predictors import PREDICTORS
from storage.entities import LAYER_STATISTICS

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
        (
            {"engine": {"intervall_s": 3}},
            "engine.intervall_s: unknown key; valid: interval_s, misfire_grace_s, ",
        ),
        ({"retry": {"attempts": 3}}, "retry.attempts: unknown key; valid: max_attempts, "),
        ({"dashboard": {"uri": "x"}}, "dashboard.uri: unknown key; valid: url"),
        (
            {"notifiers": [{"kind": "log", "min_severty": "info"}]},
            "notifiers[0].min_severty: unknown key; valid: kind, name, min_severity, projects",
        ),
        ({"predictor": {}}, "predictor: unknown key; valid: engine, retry, dashboard, predictors"),
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
        (  # a live trainer's heartbeats come 15 s apart: under a minute a live run flaps
            {"predictors": {"stalled": {"after_s": 10}}},
            "predictors.stalled.after_s: must be at least 60: a live trainer reports every 15 s",
        ),
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


def test_a_misspelled_key_in_the_file_lists_the_valid_keys(tmp_path):
    path = tmp_path / "tripwire.toml"
    path.write_text("[engine]\ninterval = 5\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (
        f"{path}: engine.interval: unknown key; valid: interval_s, misfire_grace_s, "
        "repeat_every_steps, resolve_after, max_steps_per_tick, finished_grace_s"
    )


@pytest.mark.parametrize(
    "toml, error",
    [
        (
            '[predictors.weight_growth]\nstat = "sigma_1"\n',
            "predictors.weight_growth.stat: unknown layer statistic 'sigma_1'",
        ),
        (
            '[predictors.sa_collapse]\nstat = "sa_imbalanse"\n',
            "predictors.sa_collapse.stat: unknown layer statistic 'sa_imbalanse'",
        ),
        (
            '[predictors.sa_growth]\ngrowth_stat = "sigma"\n',
            "predictors.sa_growth.growth_stat: unknown layer statistic 'sigma'",
        ),
        (
            '[predictors.rank_collapse]\nstat = "loss"\n',
            "predictors.rank_collapse.stat: unknown layer statistic 'loss'",
        ),
        (
            '[predictors.non_finite]\nlayer_keys = ["sigma1", "bogus"]\n',
            "predictors.non_finite.layer_keys[1]: unknown layer statistic 'bogus'",
        ),
    ],
)
def test_a_misspelled_layer_statistic_is_refused_with_the_valid_ones(tmp_path, toml, error):
    path = tmp_path / "tripwire.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: {error}; valid: {', '.join(LAYER_STATISTICS)}"


@pytest.mark.parametrize(
    "toml, error",
    [
        ('[predictors.non_finite]\nscalar_keys = ["loss", ""]\n', "non_finite.scalar_keys[1]"),
        ('[predictors.loss_exploded]\nkey = " "\n', "loss_exploded.key"),
    ],
)
def test_an_empty_scalar_name_is_refused(tmp_path, toml, error):
    path = tmp_path / "tripwire.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"predictors.{error}: must name a scalar the training loop logs" in str(err.value)


def test_every_layer_statistic_and_any_logged_scalar_name_is_accepted(tmp_path):
    path = tmp_path / "tripwire.toml"
    path.write_text(
        '[predictors.non_finite]\nscalar_keys = ["loss", "my_aux_loss"]\n'
        f"layer_keys = {list(LAYER_STATISTICS)!r}\n".replace("'", '"')
        + '[predictors.weight_growth]\nstat = "stable_rank"\nfalling = true\n'
        + '[predictors.grad_norm_spike]\nkey = "clipped_grad_norm"\n'
    )
    rules = load_config(path).rules()
    assert rules["non_finite"].params["layer_keys"] == list(LAYER_STATISTICS)
    assert rules["non_finite"].params["scalar_keys"] == ["loss", "my_aux_loss"]
    assert rules["weight_growth"].params["stat"] == "stable_rank"


def test_every_parameter_that_names_a_statistic_is_checked():
    """A new predictor parameter naming a statistic must join one of the two checked sets."""
    for name, spec in PREDICTORS.items():
        for key, default in spec.params.items():
            if isinstance(default, (str, list)):
                assert key in LAYER_STAT_PARAMS | SCALAR_PARAMS, f"{name}.{key}"
            if key in LAYER_STAT_PARAMS:
                names = default if isinstance(default, list) else [default]
                assert set(names) <= set(LAYER_STATISTICS), f"{name}.{key}"


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
