"""``tripwire demo`` runs the rules of ``tripwire.toml`` live and sends through its notifiers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.alerts.test_notifiers_http import Recorder

# weight_growth at a rate every layer passes while it warms up, so it fires within 60 steps;
# by default it is an info rule with a 100-step warm-up that stays silent that early
EAGER_RULE = """
[predictors.weight_growth]
severity = "critical"
max_rate = 0.0001
warmup_steps = 0
window_checks = 2
"""


def _demo(tmp_path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TRIPWIRE_")}
    return subprocess.run(
        [sys.executable, "-m", "tripwire", "demo", "--steps", "60", "--no-dashboard"]
        + ["--db", f"sqlite:///{tmp_path / 't.db'}", *args],
        cwd=tmp_path,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_demo_alerts_with_the_rules_and_notifiers_of_tripwire_toml(tmp_path):
    (tmp_path / "tripwire.toml").write_text(EAGER_RULE + '\n[[notifiers]]\nkind = "webhook"\n')
    server = Recorder([])
    try:
        result = _demo(tmp_path, env={"TRIPWIRE_WEBHOOK_URL": server.url})
    finally:
        server.close()
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"Alerts: rules from {tmp_path / 'tripwire.toml'}; notifiers: log, webhook" in out
    # the terminal shows the alert though the file routes to the webhook only
    assert "[tripwire] FIRING critical weight_growth" in out
    sent = [json.loads(r["body"]) for r in server.requests]
    assert [(m["event"], m["predictor"], m["severity"]) for m in sent] == [
        ("firing", "weight_growth", "critical")
    ]


def test_demo_without_a_file_uses_the_defaults(tmp_path):
    result = _demo(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Alerts: rules from the built-in defaults; notifiers: log" in result.stdout
    assert "weight_growth" not in result.stdout


def test_demo_config_option_and_a_bad_file_stops_before_training(tmp_path):
    (tmp_path / "mine.toml").write_text("[predictors.nope]\n")
    result = _demo(tmp_path, "--config", "mine.toml")
    assert result.returncode == 1
    assert "mine.toml: predictors.nope: unknown predictor" in result.stderr
    assert "Traceback" not in result.stderr and "step" not in result.stdout


@pytest.mark.parametrize(
    "rule, log_notifier",
    [
        (EAGER_RULE, 'projects = ["prod"]'),  # the demo's run is in project "demo"
        (EAGER_RULE.replace('"critical"', '"info"'), 'min_severity = "critical"'),
    ],
    ids=["projects", "min_severity"],
)
def test_demo_terminal_prints_every_alert_whatever_the_file_routes_to_its_log_notifier(
    tmp_path, rule, log_notifier
):
    # README: the demo's alerts follow tripwire.toml; "the terminal prints every alert either way"
    (tmp_path / "tripwire.toml").write_text(
        f'{rule}\n[[notifiers]]\nkind = "log"\n{log_notifier}\n'
    )
    result = _demo(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "FIRING" in result.stdout and "weight_growth" in result.stdout, result.stdout
