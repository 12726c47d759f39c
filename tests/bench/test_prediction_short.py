"""Short form of the prediction benchmark: one divergent and one stable run, replayed from
their recordings through the same backtest as ``tripwire evaluate``: the default rule set warns
on the first at least 5 steps before it explodes and stays silent on the second."""

from __future__ import annotations

import pytest

from alerts.config import Config
from bench.prediction.__main__ import DEFAULT_SET, default_sources
from bench.prediction.evaluate import score_suite
from bench.prediction.record import load_export, replay
from bench.prediction.runs import BY_NAME
from storage import Database


def test_defaults_warn_before_a_divergent_run_and_stay_silent_on_its_stable_twin(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'bench.db'}")
    db.upgrade()
    suite = [BY_NAME["gpt-qkv-ramp"], BY_NAME["gpt-qkv-ramp-qknorm"]]  # attention-logit growth
    for spec in suite:
        data = load_export(spec)
        assert data is not None, f"recording of {spec.name} missing or stale"
        replay(data, db)
    config = Config()
    score = score_suite(db, suite, {"default": config}, default_sources(config))[DEFAULT_SET]
    divergent, stable = score.outcomes
    assert divergent.explosion is not None and divergent.explosion >= 150
    assert divergent.verdict == "warned", divergent
    assert divergent.lead >= 5
    assert stable.verdict == "quiet", stable


def test_calibrate_writes_thresholds_learned_from_healthy_runs(tmp_path):
    from click.testing import CliRunner

    from alerts.config import load_config
    from tripwire.cli import cli

    url = f"sqlite:///{tmp_path / 'cal.db'}"
    db = Database(url)
    db.upgrade()
    replay(load_export(BY_NAME["gpt-lr-hold"]), db)
    path = tmp_path / "tripwire.toml"
    path.write_text("[engine]\ninterval_s = 5.0\n", encoding="utf-8")
    from alerts import observations

    loads = []
    load = observations.load
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(observations, "load", lambda *a, **k: loads.append(a) or load(*a, **k))
        result = CliRunner().invoke(
            cli, ["calibrate", "--db", url, "--runs", "gpt-lr-hold", "--config", str(path)]
        )
    assert result.exit_code == 0, result.output
    assert len(loads) == 1  # one replay learns and checks for a blow-up (it was two)
    config = load_config(path)
    assert config.engine.interval_s == 5.0  # other settings kept
    rule = config.rules()["weight_growth"]
    assert rule.params["max_rate"] != 0.01  # learned, not the default
    # Without --config it updates the file the scheduler reads: $TRIPWIRE_CONFIG.
    chosen = tmp_path / "model-a.toml"
    result = CliRunner().invoke(
        cli,
        ["calibrate", "--db", url, "--runs", "gpt-lr-hold"],
        env={"TRIPWIRE_CONFIG": str(chosen)},
    )
    assert result.exit_code == 0 and f"wrote {chosen}" in result.output, result.output
    assert (
        load_config(chosen).rules()["weight_growth"].params["max_rate"] == rule.params["max_rate"]
    )
    # A run that exploded is no model of health.
    replay(load_export(BY_NAME["gpt-lr-ramp"]), db)
    exploded = CliRunner().invoke(
        cli, ["calibrate", "--db", url, "--runs", "gpt-lr-hold,gpt-lr-ramp"]
    )
    assert (
        exploded.exit_code == 1
        and "gpt-lr-ramp did not train healthily: loss_exploded" in exploded.output
    )
    missing = CliRunner().invoke(cli, ["calibrate", "--db", url, "--runs", "nope"])
    assert missing.exit_code == 1 and "nope" in missing.output


def test_calibrating_on_healthy_mlps_keeps_the_gradient_spike_rule_a_spike_rule(tmp_path):
    """Their gradient norms drift down and never jump 3×: no z-score there to learn from, so
    the conservative default stays (learning the drift's near-zero z let any 3× blip through)."""
    from alerts.calibrate import learn
    from alerts.predictors import PREDICTORS
    from bench.prediction.calibrated import base_config
    from storage import runs as run_store

    db = Database(f"sqlite:///{tmp_path / 'cal.db'}")
    db.upgrade()
    healthy = ["mlp-sgd-safe", "mlp-adam-safe", "mlp-sgd-const-safe", "mlp-sgd-hold"]
    for name in healthy:
        replay(load_export(BY_NAME[name]), db)
    runs = [run_store.find_run(db, name) for name in healthy]
    learned = learn(db, runs, base_config())
    default = PREDICTORS["grad_norm_spike"].params["z_threshold"]
    assert learned["grad_norm_spike"].value == default
    assert learned["weight_growth"].value != PREDICTORS["weight_growth"].params["max_rate"]
    assert "attention_logits" not in learned  # an MLP logs no attention logit: nothing to learn


def test_calibration_replays_a_run_once_for_every_rule_in_chunks_that_change_nothing(tmp_path):
    from alerts.calibrate import THRESHOLD_PARAMS, healthy_scores
    from bench.prediction.calibrated import base_config
    from storage import runs as run_store

    db = Database(f"sqlite:///{tmp_path / 'cal.db'}")
    db.upgrade()
    replay(load_export(BY_NAME["gpt-qkv-ramp-qknorm"]), db)
    run = run_store.find_run(db, "gpt-qkv-ramp-qknorm")
    rules = {n: r for n, r in base_config().enabled_rules().items() if n in THRESHOLD_PARAMS}
    whole = healthy_scores(db, run, rules)
    assert set(whole) == set(rules) and whole["attention_logits"][0]  # a score every check
    assert healthy_scores(db, run, rules, chunk_steps=7) == whole  # memory carries over
