"""The coincidence exploration (bench/prediction/coincidence.py) computes what it says."""

from __future__ import annotations

from alerts.backtest import BacktestAlert
from bench.prediction import coincidence
from bench.prediction.record import ensure_recorded
from bench.prediction.runs import BY_NAME
from storage.db import Database
from tests.bench.alerts import backtest_alert


def _alert(rule: str, step: int, resolved: int | None) -> BacktestAlert:
    return backtest_alert(step, resolved, rule=rule, layer="fc1")


def test_a_coincidence_lasts_while_enough_rules_each_have_an_alert_open():
    alerts = [
        _alert("x", 10, 50),
        _alert("x", 20, 60),  # another layer's: x stays open until 60
        _alert("y", 30, None),
        _alert("z", 40, 45),
        _alert("x", 70, 80),
        _alert("other", 0, None),  # not one of the rules
    ]
    two = coincidence.coincidences(alerts, ("x", "y", "z"), 2)
    assert [(c.step, c.resolved_step) for c in two] == [(30, 60), (70, 80)]
    three = coincidence.coincidences(alerts, ("x", "y", "z"), 3)
    assert [(c.step, c.resolved_step) for c in three] == [(40, 45)]
    assert two[0].predictor == "coincidence"
    assert coincidence.coincidences(alerts, ("x", "y"), 3) == []


def test_requiring_more_rules_at_once_never_adds_a_warning_or_a_false_alarm(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'bench.db'}")
    db.ensure_schema()
    suite = [BY_NAME[n] for n in ("gpt-qkv-ramp", "mlp-adam-safe", "mlp-sgd-ramp")]
    for spec in suite:
        ensure_recorded(spec, db)
    scores = coincidence.score(db, suite)
    verdicts = {label: [o.verdict for o in s.outcomes] for label, s in scores.items()}

    assert verdicts["all 3"] == ["warned", "false alarm", "late"]
    for rule in coincidence.NOISY:
        for alone, together in zip(verdicts[rule], verdicts["all 3"], strict=True):
            assert together == alone or together in ("late", "quiet", "missed")
    # the recorded figures the docs quote: mlp-sgd-ramp is warned by loss_spike alone
    assert verdicts["loss_spike"][2] == "warned" and verdicts["2 of the 3"][2] == "late"
