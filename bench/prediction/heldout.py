"""A rule set scored on mechanisms its tuning never saw (leave one mechanism out).

The rules whose thresholds were tuned on this suite are ``diverging``, ``rank_collapse`` and the
attention logits' growth in the default rule set (``candidates.TUNED``), ``diverging`` and the
attention logits' level in the eager one (``candidates.EAGER_TUNED``). For every mechanism in
turn, their settings are chosen together among their candidates (``candidates.py``) using only
the runs of the *other* mechanisms — fewest false alarms, then most explosions warned, then the
longest median lead — and the held-out mechanism's runs are scored with the rule set using
those settings. Every run is thus scored by rules tuned without its mechanism (and without its
twin, which shares the mechanism).
"""

from __future__ import annotations

import itertools

from bench.prediction.evaluate import RunOutcome, Score
from bench.prediction.runs import RunSpec


def _min(*steps: int | None) -> int | None:
    present = [s for s in steps if s is not None]
    return min(present) if present else None


def with_rule(others: Score, rule: Score, label: str) -> Score:
    """The rule set ``others`` plus ``rule``: per run, whichever fired first."""
    out = Score(label)
    for a, b in zip(others.outcomes, rule.outcomes, strict=True):
        out.outcomes.append(
            RunOutcome(
                a.run,
                a.kind,
                a.explosion,
                _min(a.first, b.first),
                _min(a.first_after, b.first_after),
            )
        )
    return out


def _rank(score: Score, runs: set[str]) -> tuple:
    part = Score(score.source, [o for o in score.outcomes if o.run in runs])
    return (part.false_alarms + part.control_false, -part.warned, -(part.median_lead or 0))


def leave_one_mechanism_out(
    suite: list[RunSpec],
    others: Score,
    tuned: list[dict[str, Score]],
    source: str = "default rule set, held out",
) -> tuple[Score, dict[str, str]]:
    """Held-out score of a rule set (named ``source``), and the settings chosen for each mechanism.

    ``others`` is the rule set without its tuned rules; ``tuned`` holds, per tuned rule, its
    candidates' scores by label. Every combination of one candidate per rule is tried.
    """
    combined = {}
    for combo in itertools.product(*(rule.items() for rule in tuned)):
        label = " + ".join(name for name, _ in combo)
        score = others
        for _, candidate in combo:
            score = with_rule(score, candidate, label)
        combined[label] = score
    chosen: dict[str, str] = {}
    by_run: dict[str, RunOutcome] = {}
    for mechanism in sorted({s.mechanism for s in suite}):
        train = {s.name for s in suite if s.mechanism != mechanism}
        label = min(combined, key=lambda c: _rank(combined[c], train))
        chosen[mechanism] = label
        for o in combined[label].outcomes:
            if o.run not in train:
                by_run[o.run] = o
    held = Score(source, [by_run[s.name] for s in suite])
    return held, chosen
