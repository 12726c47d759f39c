"""Stored statistics → one :class:`Observation` per step, and how far a run can be evaluated."""

from __future__ import annotations

from datetime import datetime

from alerts.predictors import Observation
from storage import stats
from storage.db import Database
from storage.entities import LayerStat, Run, ScalarPoint


def group_by_step(scalars: list[ScalarPoint], layer_rows: list[LayerStat]) -> list[Observation]:
    """Merge scalar points and layer statistics into observations in step order.

    >>> obs = group_by_step([ScalarPoint(1, "loss", 2.0), ScalarPoint(2, "loss", 1.9)],
    ...                     [LayerStat(2, "fc", sa_imbalance=0.1)])
    >>> [(o.step, dict(o.scalars), list(o.layers)) for o in obs]
    [(1, {'loss': 2.0}, []), (2, {'loss': 1.9}, ['fc'])]
    """
    scal: dict[int, dict] = {}
    for point in scalars:
        scal.setdefault(point.step, {})[point.key] = point.value
    lay: dict[int, dict] = {}
    for row in layer_rows:
        lay.setdefault(row.step, {})[row.layer] = row
    return [
        Observation(step, scal.get(step, {}), lay.get(step, {}))
        for step in sorted(set(scal) | set(lay))
    ]


def load(db: Database, run_id: int, after_step: int, upto_step: int) -> list[Observation]:
    """Observations of steps in (after_step, upto_step]."""
    scalars = stats.scalar_series(db, run_id, after_step=after_step, upto_step=upto_step)
    layer_rows = stats.layer_stats(
        db, run_id, after_step=after_step, upto_step=upto_step, with_hist=False
    )
    return group_by_step(scalars, layer_rows)


def horizon(
    db: Database, run: Run, *, now: datetime | None = None, stalled_after_s: float | None = None
) -> int | None:
    """The last step whose data is complete, or None if the run has no data yet.

    An ended (or stalled) run is complete. For a running run the newest scalar step is held
    back (more of its rows may still be in flight), and so is everything past the last
    check's layer statistics plus one check interval, since a check's layer rows may land
    after the next steps' scalars. Evaluating only complete steps is what lets the live
    engine agree with a backtest of the finished run. It relies on the collector storing the
    scalars of the steps up to a check no later than the check's layer rows.
    """
    last_scalar, last_layer = stats.last_steps(db, run.id)
    if last_scalar is None and last_layer is None:
        return None
    newest = max(s for s in (last_scalar, last_layer) if s is not None)
    done = run.status != "running"
    if not done and now is not None and stalled_after_s is not None:
        done = run.is_stalled(now, stalled_after_s)
    if done:
        return newest
    limit = newest - 1
    if last_layer is not None:
        limit = min(limit, last_layer + max(1, run.every or 1) - 1)
    return limit
