"""The fresh runs are what their section says: suite runs at settings the suite never used."""

from __future__ import annotations

import dataclasses

from bench.prediction.fresh import FAMILIES, SEEDS, fresh_runs
from bench.prediction.runs import BY_NAME, SUITE


def _knobs(spec) -> dict:  # noqa: ANN001
    """A run's settings, without its name, kind, length or twin (what makes it the same run)."""
    out = dataclasses.asdict(spec)
    for key in ("name", "kind", "steps", "twin"):
        del out[key]
    return out


def test_no_fresh_run_repeats_a_suite_run():
    suite = [_knobs(s) for s in SUITE]
    runs = fresh_runs()
    assert len(runs) == sum(len(f.values) for f in FAMILIES) * len(SEEDS)
    assert len({r.name for r in runs}) == len(runs)
    for run in runs:
        assert _knobs(run) not in suite, run.name


def test_the_check_would_catch_a_repeat():
    repeat = dataclasses.replace(BY_NAME["gpt-qkv-ramp-s1"], name="x", steps=650, twin=None)
    assert _knobs(repeat) in [_knobs(s) for s in SUITE]


def test_a_second_cpu_gets_its_own_section_and_leaves_the_first_alone(tmp_path):
    from bench.common import _cpu_name, write_section
    from bench.prediction.evaluate import Score, outcome
    from bench.prediction.fresh import SECOND_CPU_TITLE, TITLE, second_cpu_section

    run = dataclasses.replace(BY_NAME["mlp-sgd-const"], name="fresh-const-0.25-s2")
    scores = {"default rule set": Score("default rule set", [outcome(run, 629, [])])}
    body = second_cpu_section(scores)
    assert _cpu_name() in body
    assert "| fresh-const-0.25-s2 | divergent | 629 | missed |" in body
    docs = tmp_path / "benchmarks.md"
    docs.write_text(f"# Benchmarks\n\n## {TITLE}\n\nthe first CPU's prose\n")
    write_section(SECOND_CPU_TITLE, body, docs)
    text = docs.read_text()
    assert "the first CPU's prose" in text
    assert text.index(f"## {TITLE}\n") < text.index(f"## {SECOND_CPU_TITLE}\n")
