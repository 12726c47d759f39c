"""What ``monitor.log()`` stores of the values it is given: one number each, or nothing and a warning."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

import collector
from storage import Database, runs, stats
from tests.collector.test_monitor import TinyNet, _batches

BAD_STEPS = (2, 3)  # with every=2: a check step, then an ordinary one


def _stored(sqlite_url: str, run: str) -> dict[str, dict[int, float]]:
    db = Database(sqlite_url)
    by_key: dict[str, dict[int, float]] = {}
    for point in stats.scalar_series(db, runs.find_run(db, run).id):
        by_key.setdefault(point.key, {})[point.step] = point.value
    return by_key


def _warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name.startswith("tripwire")
    ]


def test_a_value_that_is_not_one_number_is_not_stored_and_is_warned_of_once_per_key(
    sqlite_url, tmp_path, caplog
):
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = collector.watch(model, run="bad", db=sqlite_url, every=2, spool_dir=tmp_path)
    losses = {}
    for step, (x, y) in enumerate(_batches(6)):
        per_token = nn.functional.cross_entropy(
            model(x).reshape(-1, 3), y.reshape(-1), reduction="none"
        )
        loss = per_token.mean()
        loss.backward()
        losses[step] = loss.item()
        if step in BAD_STEPS:
            monitor.log(
                step,
                loss=per_token,  # 32 values: forgot the .mean()
                lr=None,
                note="abc",
                hist=np.array([1.0, 2.0, 3.0]),
                obj=object(),
                tokens=384,
            )
        else:
            monitor.log(
                step,
                loss=loss,
                lr=0.05,
                note=float(step),
                hist=np.float32(0.25),
                obj=np.array([1.5]),
                tokens=384,
            )
        opt.step()
        opt.zero_grad()
    monitor.close()

    bad_keys = ("loss", "lr", "note", "hist", "obj")
    assert monitor.errors == len(bad_keys) * len(BAD_STEPS)  # each value left out is counted
    stored = _stored(sqlite_url, "bad")
    good_steps = [s for s in range(6) if s not in BAD_STEPS]
    for key in bad_keys:  # nothing at the bad steps, and the good values before and after
        assert sorted(stored[key]) == good_steps, key
    assert stored["loss"] == {s: losses[s] for s in good_steps}
    assert stored["lr"] == dict.fromkeys(good_steps, 0.05)
    assert stored["note"] == {s: float(s) for s in good_steps}
    assert stored["hist"] == dict.fromkeys(good_steps, 0.25)
    assert stored["obj"] == dict.fromkeys(good_steps, 1.5)
    assert stored["tokens"] == dict.fromkeys(range(6), 384.0)  # the good key of the same calls
    assert sorted(stored["grad_norm"]) == [0, 2, 4]  # the check at a bad step still ran

    warnings = _warnings(caplog)
    expected = {
        "loss": "is a tensor of shape (32,), not a number; not stored (log loss.mean()",
        "lr": "is None, not a number; not stored",
        "note": "is a str, not a number; not stored",
        "hist": "is a numpy array of shape (3,), not a number; not stored (log hist.mean()",
        "obj": "is an object, not a number; not stored",
    }
    assert len(warnings) == len(expected)  # one per key, though each went wrong twice
    for key, what in expected.items():
        (message,) = [w for w in warnings if f"log({key}=...)" in w]
        assert f"log({key}=...) at step 2 {what}" in message
    assert "collector error" not in caplog.text


def test_one_number_in_any_form_is_stored_exactly_and_non_finite_ones_as_they_are(
    sqlite_url, tmp_path, caplog
):
    model = TinyNet()
    monitor = collector.watch(model, run="good", db=sqlite_url, every=2, spool_dir=tmp_path)
    values = {
        "one_element": torch.tensor([0.1]),
        "zero_dim": torch.tensor(2.7, dtype=torch.bfloat16),
        "grad_tensor": torch.tensor([[1.5]], requires_grad=True) * 3,
        "int_tensor": torch.tensor([7]),
        "np_float": np.float64(0.1),
        "np_float32": np.float32(0.1),
        "np_int": np.int64(-3),
        "np_one_element": np.array([[2.5]]),
        "py_int": 123_456_789_012,
        "py_bool": True,
        "nan": torch.tensor(float("nan")),
        "inf": np.float32("inf"),
        "minus_inf": float("-inf"),
    }
    expected = {
        "one_element": torch.tensor(0.1).item(),  # float32's 0.1, widened exactly
        "zero_dim": torch.tensor(2.7, dtype=torch.bfloat16).item(),
        "grad_tensor": 4.5,
        "int_tensor": 7.0,
        "np_float": 0.1,
        "np_float32": float(np.float32(0.1)),
        "np_int": -3.0,
        "np_one_element": 2.5,
        "py_int": 123_456_789_012.0,
        "py_bool": 1.0,
    }
    for step, (x, _) in enumerate(_batches(3)):  # steps 0 and 2 check, 1 does not
        model(x).sum().backward()
        monitor.log(step, **values)
        monitor.record(step, extra=1.0, absent=None)  # an integration with no value this step
        model.zero_grad()
    monitor.close()

    assert monitor.errors == 0 and _warnings(caplog) == []
    stored = _stored(sqlite_url, "good")
    assert "loss" not in stored and "lr" not in stored and "absent" not in stored
    for key, value in expected.items():
        assert stored[key] == dict.fromkeys(range(3), value), key
    for step in range(3):
        assert math.isnan(stored["nan"][step])
        assert stored["inf"][step] == math.inf and stored["minus_inf"][step] == -math.inf
    assert stored["extra"] == dict.fromkeys(range(3), 1.0)


def test_a_logged_value_that_is_not_a_number_does_not_hide_the_measured_one(
    sqlite_url, tmp_path, caplog
):
    model = TinyNet()
    monitor = collector.watch(
        model, run="logz", db=sqlite_url, every=1, spool_dir=tmp_path, output_layer="head"
    )
    x, _ = next(_batches(1))
    logits = model(x)
    logits.sum().backward()
    monitor.log(0, loss=1.0, log_z=collector.log_z(logits).reshape(1, 1).expand(2, 2))
    monitor.close()
    assert monitor.errors == 1
    (stored,) = _stored(sqlite_url, "logz")["log_z"].values()  # the one measured at the head
    assert stored == pytest.approx(float(collector.log_z(logits)), rel=1e-6)
    (message,) = _warnings(caplog)
    assert "log(log_z=...) at step 0 is a tensor of shape (2, 2)" in message
