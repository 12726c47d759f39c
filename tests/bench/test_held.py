"""Holding a stable run's last learning rate tells a stable run from a divergent one cut short."""

from __future__ import annotations

import dataclasses

from bench.prediction.held import hold, last_lr, section
from bench.prediction.runs import BY_NAME


def test_the_sgd_twin_at_its_old_peak_explodes_when_held_and_at_its_new_one_trains_on():
    safe = BY_NAME["mlp-sgd-safe"]
    old = dataclasses.replace(safe, schedule=dataclasses.replace(safe.schedule, peak=0.3))
    # where depends on the CPU: at 592 on an Intel Xeon (a divergent run cut short at step 400),
    # at 382 on an AMD EPYC
    assert hold(old)[0] is not None
    assert hold(safe)[0] is None


def test_the_table_names_the_held_rates_and_the_outcome():
    head = BY_NAME["gpt-head-ramp-safe"]
    assert last_lr(head) == "0.003, lm_head 1"
    text = section([(head, None, 0.06), (BY_NAME["mlp-sgd-safe"], 592, 4.6)])
    assert "| gpt-head-ramp-safe | 450 | 0.003, lm_head 1 | trains on | +0.06 |" in text
    assert "**explodes at 592**" in text
