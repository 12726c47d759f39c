"""Fixtures for the alert tests: a real SQLite file, runs written as the collector would."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta

import pytest

from storage import Database
from storage import runs as runs_store
from storage import stats as stats_store

T0 = datetime(2025, 1, 1, 12, 0, 0)


@pytest.fixture
def sqlite_db(tmp_path):
    """A migrated SQLite file database."""
    db = Database(f"sqlite:///{tmp_path / 'tripwire.db'}")
    db.upgrade()
    yield db
    db.dispose()


class Clock:
    """A controllable naive-UTC clock."""

    def __init__(self, now: datetime = T0):
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_run(
    db: Database,
    name: str | None = None,
    *,
    layers: Iterable[str] = (),
    every: int = 10,
    project: str = "default",
    started_at: datetime = T0,
) -> int:
    """A running run with these layers; returns its id."""
    name = name or f"run-{uuid.uuid4().hex[:8]}"
    with db.session() as s:
        run_id = runs_store.ensure_run(
            s,
            uid=uuid.uuid4().hex,
            project=project,
            name=name,
            started_at=started_at,
            every=every,
        )
        specs = [{"name": n, "position": i, "kind": "Linear"} for i, n in enumerate(layers)]
        runs_store.ensure_layers(s, run_id, specs)
    return run_id


def write_steps(
    db: Database,
    run_id: int,
    scalars: dict[int, dict[str, float]],
    layer_rows: dict[int, dict[str, dict[str, float]]] | None = None,
    *,
    at: datetime = T0,
) -> None:
    """Write scalars {step: {key: value}} and layer rows {step: {layer: {stat: value}}}."""
    layer_rows = layer_rows or {}
    with db.session() as s:
        ids = runs_store.ensure_layers(s, run_id, [])
        stats_store.write_scalars(
            s,
            run_id,
            [
                {"step": step, "key": k, "value": v, "wall_time": float(step)}
                for step, values in scalars.items()
                for k, v in values.items()
            ],
        )
        stats_store.write_layer_stats(
            s,
            run_id,
            ids,
            [
                {"layer": layer, "step": step, "wall_time": float(step), **values}
                for step, by_layer in layer_rows.items()
                for layer, values in by_layer.items()
            ],
        )
        last = max([*scalars, *layer_rows], default=None)
        runs_store.touch(s, run_id, last_step=last, at=at)


def in_chunks(scalars: dict, layer_rows: dict, size: int):
    """``scalars`` and ``layer_rows`` (as :func:`write_steps` takes them) in consecutive chunks of
    ``size`` steps from step 0, as a live run writes them."""
    for start in range(0, max([*scalars, *layer_rows]) + 1, size):
        yield (
            {s: v for s, v in scalars.items() if start <= s < start + size},
            {s: v for s, v in layer_rows.items() if start <= s < start + size},
        )


def finish_run(db: Database, run_id: int, *, at: datetime = T0, status: str = "finished") -> None:
    with db.session() as s:
        runs_store.finish(s, run_id, status=status, at=at)


def exploding_series(steps: int = 300, blowup: int = 200, every: int = 10):
    """A synthetic run: healthy until ``blowup``, then SA collapse, growth, spikes and NaN.

    Layer ``ln_out`` is one-signed from the start (imbalance ≈ 0.97 throughout) and must never
    alert; ``fc`` has mixed signs until the collapse.
    """
    scalars, layers = {}, {}
    for step in range(steps):
        wobble = 0.05 * math.sin(step * 1.7)
        loss = 3.0 * math.exp(-step / 80) + 1.0 + wobble
        grad = 1.0 + 0.1 * math.sin(step * 0.9)
        if step >= blowup + 40:
            loss, grad = 1.0 + (step - blowup - 40) * 0.5, grad * 50
        if step >= blowup + 60:
            loss, grad = float("nan"), float("inf")
        scalars[step] = {"loss": loss, "grad_norm": grad, "lr": 1e-3}
        if step % every == 0:
            late = max(0, step - blowup)
            imbalance = 0.1 + 0.02 * math.sin(step) if late == 0 else min(0.98, 0.1 + late * 0.03)
            sigma = 2.0 + step * 0.001 if late == 0 else 2.2 * math.exp(0.03 * late)
            layers[step] = {
                "fc": {"sa_imbalance": imbalance, "sigma1": sigma, "grad_norm": grad},
                "ln_out": {"sa_imbalance": 0.97 + 0.01 * math.sin(step), "sigma1": 1.0},
            }
    return scalars, layers
