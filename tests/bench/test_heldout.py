"""Leave one mechanism out: each mechanism is scored with the settings chosen on the others."""

from __future__ import annotations

from bench.prediction.evaluate import RunOutcome, Score
from bench.prediction.heldout import leave_one_mechanism_out
from bench.prediction.runs import DIVERGENT, STABLE, RunSpec, Schedule

SUITE = [
    RunSpec("a-div", DIVERGENT, "mlp", "a", Schedule(0.1)),
    RunSpec("a-safe", STABLE, "mlp", "a", Schedule(0.1)),
    RunSpec("b-div", DIVERGENT, "mlp", "b", Schedule(0.1)),
    RunSpec("b-safe", STABLE, "mlp", "b", Schedule(0.1)),
]


def _score(name: str, first: dict[str, int | None]) -> Score:
    """A source that first fired at ``first[run]`` (None: never); every divergent run explodes
    at step 300."""
    return Score(
        name,
        [
            RunOutcome(s.name, s.kind, 300 if s.kind == DIVERGENT else None, first.get(s.name))
            for s in SUITE
        ],
    )


def test_each_mechanism_is_scored_with_the_setting_the_others_chose():
    silent = _score("others", {})
    # "loose" warns on both explosions but rings on a's stable twin; "tight" is silent on both
    # twins and warns on b only. Tuned on a, "tight" wins (no false alarm there); tuned on b,
    # "loose" and "tight" tie on false alarms and warnings, and "loose" leads longer.
    loose = _score("loose", {"a-div": 200, "a-safe": 250, "b-div": 150})
    tight = _score("tight", {"b-div": 250})
    held, chosen = leave_one_mechanism_out(
        SUITE, silent, [{"loose": loose, "tight": tight}], source="held out"
    )
    assert chosen == {"a": "loose", "b": "tight"}
    assert held.source == "held out"
    by_run = {o.run: o for o in held.outcomes}
    # a is scored with "loose" (chosen on b): warned, and its twin's false alarm counts
    assert by_run["a-div"].verdict == "warned" and by_run["a-safe"].verdict == "false alarm"
    # b is scored with "tight" (chosen on a): warned 50 steps ahead, twin quiet
    assert by_run["b-div"].lead == 50 and by_run["b-safe"].verdict == "quiet"
