"""Do the noisy early rules agree only before explosions? (explored, not shipped)

``sa_collapse``, ``weight_growth`` and ``loss_spike`` warn early on most divergent runs and ring
on many stable ones, which is why they ship as ``info``. If their false alarms were independent
and their warnings not, an alert raised only while several of them are open at once would keep
the lead and lose the false alarms. ``python -m bench.prediction.coincidence`` replays the
recorded runs with the default configuration, derives such a coincidence alert from each
combination's open intervals (open while at least ``k`` of the rules are open; it fires at the
step the ``k``-th opens) and prints the benchmark's tables for it.
"""

from __future__ import annotations

import tempfile
from collections import Counter, defaultdict
from pathlib import Path

from alerts.backtest import BacktestAlert
from alerts.config import Config
from bench.common import command_parser
from bench.prediction.evaluate import Score, backtest, outcome
from bench.prediction.record import ensure_recorded
from bench.prediction.report import per_run, summary
from bench.prediction.runs import SUITE
from storage.db import Database

NOISY = ("sa_collapse", "weight_growth", "loss_spike")
COMBINATIONS = {
    "sa_collapse + weight_growth": (("sa_collapse", "weight_growth"), 2),
    "sa_collapse + loss_spike": (("sa_collapse", "loss_spike"), 2),
    "weight_growth + loss_spike": (("weight_growth", "loss_spike"), 2),
    "2 of the 3": (NOISY, 2),
    "all 3": (NOISY, 3),
}
"""Label: (rules, how many of them must be open at once)."""


def coincidences(
    alerts: list[BacktestAlert], rules: tuple[str, ...], k: int
) -> list[BacktestAlert]:
    """One alert per stretch of steps in which at least ``k`` of ``rules`` were open.

    An alert is open from its firing step until its resolving step (exclusive), or for good; a
    rule is open while any of its alerts is (per-layer rules raise one per layer).

    >>> def a(rule, step, resolved):
    ...     return BacktestAlert("r", "u", rule, "info", step, None, "", None, step, resolved, None)
    >>> seen = [a("x", 10, 50), a("x", 20, 60), a("y", 30, None), a("x", 70, 80)]
    >>> [(c.step, c.resolved_step) for c in coincidences(seen, ("x", "y"), 2)]
    [(30, 60), (70, 80)]
    """
    changes: defaultdict[int, Counter] = defaultdict(Counter)  # step: rule: alerts opened
    for alert in alerts:
        if alert.predictor in rules:
            changes[alert.step][alert.predictor] += 1
            if alert.resolved_step is not None:
                changes[alert.resolved_step][alert.predictor] -= 1
    open_alerts = Counter()
    stretches, since = [], None
    for step in sorted(changes):
        for rule, change in changes[step].items():
            open_alerts[rule] += change
        rules_open = sum(n > 0 for n in open_alerts.values())
        if rules_open >= k and since is None:
            since = step
        elif rules_open < k and since is not None:
            stretches.append((since, step))
            since = None
    if since is not None:
        stretches.append((since, None))
    return [
        BacktestAlert("", "", "coincidence", "warning", s, None, "", None, s, end, None)
        for s, end in stretches
    ]


def score(db: Database, suite: list = SUITE) -> dict[str, Score]:
    """Each combination of :data:`COMBINATIONS`, and each noisy rule alone, over ``suite``."""
    sources = {rule: ((rule,), 1) for rule in NOISY} | COMBINATIONS
    scores = {label: Score(label) for label in sources}
    config = Config()
    for spec in suite:
        explosion, alerts = backtest(db, spec, config)
        for label, (rules, k) in sources.items():
            scores[label].outcomes.append(outcome(spec, explosion, coincidences(alerts, rules, k)))
    return scores


def main(argv: list[str] | None = None) -> None:
    parser = command_parser("bench.prediction.coincidence", __doc__)
    parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{Path(tmp) / 'bench.db'}")
        db.ensure_schema()
        for spec in SUITE:
            ensure_recorded(spec, db)
        scores = score(db)
    print(summary(scores) + "\n\n" + per_run(scores))


if __name__ == "__main__":
    main()
