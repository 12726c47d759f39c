"""The retrained suite's section says which runs meant to diverge did not explode here."""

from __future__ import annotations

from bench.prediction.__main__ import DEFAULT_SET
from bench.prediction.evaluate import Score, outcome
from bench.prediction.retrained import section
from bench.prediction.runs import BY_NAME


def test_a_run_that_did_not_explode_here_is_named_and_counts_neither_way():
    exploded = outcome(BY_NAME["mlp-sgd-ramp"], 315, [])
    calm = outcome(BY_NAME["gpt-lr-ramp"], None, [])
    text = section({DEFAULT_SET: Score(DEFAULT_SET, [exploded, calm])})
    prose = " ".join(text.split())
    assert "1 of the 2 runs meant to diverge exploded here (not: `gpt-lr-ramp`)" in prose
    assert "| `default rule set` | 0/1 | – | 0 | 1 |" in text
    assert "| gpt-lr-ramp | divergent | – | not exploded |" in text
