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
