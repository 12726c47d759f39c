"""How the benchmark judges a divergent run: a warning must still be open before the explosion."""

from __future__ import annotations

from bench.prediction.evaluate import outcome
from bench.prediction.runs import BY_NAME
from tests.bench.alerts import backtest_alert as _alert


def test_an_alert_that_ended_long_before_the_explosion_is_no_warning():
    spec = BY_NAME["mlp-sgd-const-hi"]  # its sigma_surge: fired at 110, resolved at 140
    ended = outcome(spec, 339, [_alert(110, resolved=140), _alert(350)])
    assert (ended.verdict, ended.first) == ("late", 350)
    assert outcome(spec, 339, [_alert(110, resolved=140)]).verdict == "missed"


def test_the_lead_counts_from_the_alert_still_open_five_steps_before():
    spec = BY_NAME["mlp-sgd-const-hi"]
    still_open = outcome(spec, 339, [_alert(110, resolved=140), _alert(300), _alert(320, 336)])
    assert (still_open.verdict, still_open.lead) == ("warned", 39)
    resolved_after_the_deadline = outcome(spec, 339, [_alert(200, resolved=336)])
    assert (resolved_after_the_deadline.verdict, resolved_after_the_deadline.lead) == (
        "warned",
        139,
    )
    too_late = outcome(spec, 339, [_alert(336)])
    assert too_late.verdict == "late"


def test_any_alert_on_a_stable_run_is_a_false_alarm_even_if_it_ended():
    assert (
        outcome(BY_NAME["mlp-sgd-safe"], None, [_alert(220, resolved=240)]).verdict == "false alarm"
    )


def test_a_divergent_run_that_did_not_explode_counts_neither_way():
    from bench.prediction.evaluate import Score
    from bench.prediction.report import per_run, summary

    spec = BY_NAME["mlp-sgd-const-hi"]  # retrained on another CPU, a near-edge run can train on
    trained_on = outcome(spec, None, [_alert(300)])
    assert trained_on.verdict == "not exploded" and trained_on.lead is None
    exploded = outcome(BY_NAME["mlp-sgd-const"], 326, [_alert(300)])
    score = Score("default", [trained_on, exploded])
    assert (score.warned, score.median_lead) == (1, 26)
    assert "| `default` | 1/1 | 26 |" in summary({"default": score})
    assert "| mlp-sgd-const-hi | divergent | – | not exploded (@300) |" in per_run(
        {"default": score}
    )
