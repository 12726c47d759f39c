"""Markdown tables of benchmark scores (printed by the command, pasted into the docs)."""

from __future__ import annotations

from bench.prediction.evaluate import Score
from bench.prediction.runs import CONTROL, DIVERGENT, STABLE


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def summary(scores: dict[str, Score]) -> str:
    """One row per source: warned, median lead, late, missed, false alarms."""
    rows = []
    for name, score in scores.items():
        div, stable = score.of(DIVERGENT), score.of(STABLE)
        late = sum(o.verdict == "late" for o in div)
        missed = sum(o.verdict == "missed" for o in div)
        lead = "–" if score.median_lead is None else f"{score.median_lead:g}"
        control = ", ".join(
            "false alarm"
            if o.verdict == "false alarm"
            else (f"quiet (fired {o.first_after})" if o.first_after is not None else "quiet")
            for o in score.of(CONTROL)
        )
        rows.append(
            [
                f"`{name}`",
                f"{score.warned}/{len(div)}",
                lead,
                late,
                missed,
                f"{score.false_alarms}/{len(stable)}",
                control or "–",
            ]
        )
    header = [
        "source",
        "warned ≥5 ahead",
        "median lead",
        "late",
        "missed",
        "false alarms (stable)",
        "control before ×10",
    ]
    return _table(header, rows)


def per_run(scores: dict[str, Score]) -> str:
    """One row per run, one column per source: lead in steps, or what happened instead."""
    names = list(scores)
    first = scores[names[0]]
    rows = []
    for i, o in enumerate(first.outcomes):
        row = [o.run, o.kind, "–" if o.explosion is None else o.explosion]
        for name in names:
            out = scores[name].outcomes[i]
            row.append(_cell(out))
        rows.append(row)
    return _table(["run", "kind", "explodes at", *[f"`{n}`" for n in names]], rows)


def _cell(o) -> str:  # noqa: ANN001
    verdict = o.verdict
    if verdict == "warned":
        return f"**{o.lead}** ahead"
    if verdict == "late":
        return f"late ({-o.lead:+d})" if o.lead is not None else "late"
    if verdict == "false alarm":
        return f"FALSE @{o.first}"
    if verdict == "quiet" and o.first_after is not None:
        return f"quiet (@{o.first_after})"
    if verdict == "not exploded" and o.first is not None:
        return f"not exploded (@{o.first})"
    return verdict
