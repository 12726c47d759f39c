"""A run's data as pandas DataFrames in the contract's column names (``run``, ``step``, ``layer``, ...).

Statistics are nullable floats: ``<NA>`` where nothing was stored (a scalar not logged at that
step), NaN and ±Inf where they were (``df.loss.isna()`` finds the gaps, ``np.isnan`` the NaNs).

>>> from storage.export import export_frame
>>> df = export_frame("gpt-small-lr3e-3", what="layers")   # doctest: +SKIP
>>> df.columns[:4].tolist()  # doctest: +SKIP
['run', 'step', 'layer', 'grad_norm']
"""

from __future__ import annotations

from sqlalchemy import select

from storage import runs, stats
from storage._models import SqlAlert
from storage.db import Database
from storage.entities import LAYER_STATISTICS, STEP_STATISTICS, Run

WHAT = ("scalars", "layers", "alerts", "run")


def _pandas():
    try:
        import pandas as pd
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("exporting needs pandas: pip install 'tripwire[export]'") from exc
    return pd


def _floats(values: list[float | None]):
    """A nullable float column: ``<NA>`` where nothing was stored, NaN and ±Inf as stored."""
    import numpy as np

    pd = _pandas()
    mask = np.array([v is None for v in values], dtype=bool)
    data = np.array([0.0 if v is None else v for v in values], dtype=np.float64)
    return pd.arrays.FloatingArray(data, mask)


def _frame(rows: list[dict], columns: list[str], floats: list[str], ints: tuple[str, ...] = ()):
    """``rows`` as a DataFrame whose ``floats`` keep missing apart from NaN and ``ints`` stay
    integers where some are missing."""
    pd = _pandas()
    data = {}
    for name in columns:
        values = [row.get(name) for row in rows]
        if name in floats:
            data[name] = _floats(values)
        elif name in ints:
            data[name] = pd.array(values, dtype="Int64")
        else:
            data[name] = values
    return pd.DataFrame(data, columns=columns)


def scalars_frame(db: Database, run: Run):
    """One row per step: ``run, step, wall_time, loss, lr, grad_norm, weight_norm, <user scalars>``."""
    points = stats.scalar_series(db, run.id)
    keys = sorted(
        {p.key for p in points},
        key=lambda k: (
            k not in STEP_STATISTICS,
            STEP_STATISTICS.index(k) if k in STEP_STATISTICS else 0,
            k,
        ),
    )
    by_step: dict[int, dict] = {}
    for p in points:
        row = by_step.setdefault(
            p.step, {"run": run.name, "step": p.step, "wall_time": p.wall_time}
        )
        row[p.key] = p.value
    columns = ["run", "step", "wall_time", *keys]
    return _frame([by_step[s] for s in sorted(by_step)], columns, floats=keys)


def layers_frame(db: Database, run: Run):
    """One row per (step, layer): ``run, step, layer, <LAYER_STATISTICS>, sa_hist, wall_time``."""
    rows = [
        {"run": run.name, "step": s.step, "layer": s.layer}
        | {name: getattr(s, name) for name in LAYER_STATISTICS}
        | {"sa_hist": s.sa_hist, "wall_time": s.wall_time}
        for s in stats.layer_stats(db, run.id)
    ]
    columns = ["run", "step", "layer", *LAYER_STATISTICS, "sa_hist", "wall_time"]
    return _frame(rows, columns, floats=list(LAYER_STATISTICS))


def alerts_frame(db: Database, run: Run):
    """One row per alert: ``run, predictor, severity, step (fired), layer, message, state, ...``."""
    with db.session() as s:
        found = s.scalars(
            select(SqlAlert)
            .where(SqlAlert.run_id == run.id)
            .order_by(SqlAlert.first_step, SqlAlert.id)
        )
        rows = [
            {
                "run": run.name,
                "predictor": a.predictor,
                "severity": a.severity,
                "step": a.fired_step if a.fired_step is not None else a.first_step,
                "layer": a.layer,
                "message": a.message,
                "state": a.state,
                "first_step": a.first_step,
                "resolved_step": a.resolved_step,
                "score": a.score,
            }
            for a in found
        ]
    columns = [
        "run",
        "predictor",
        "severity",
        "step",
        "layer",
        "message",
        "state",
        "first_step",
        "resolved_step",
        "score",
    ]
    return _frame(rows, columns, floats=["score"], ints=("step", "first_step", "resolved_step"))


RUN_COLUMNS = [
    "run", "id", "uid", "project", "status", "started_at", "ended_at", "last_step", "every",
    "host", "tags", "config", "sa_bin_edges", "layers", "error",
]  # fmt: skip


def run_frame(db: Database, run: Run):
    """One row: the run's identity, status and times, ``tags``, ``config``, ``sa_bin_edges`` (the
    41 edges of ``sa_hist``'s bins) and ``layers`` (each monitored layer's ``name``, ``kind`` and
    ``shape``, in model order)."""
    layers = [{"name": x.name, "kind": x.kind, "shape": x.shape} for x in runs.layers(db, run.id)]
    row = {
        "run": run.name,
        "id": run.id,
        "uid": run.uid,
        "project": run.project,
        "status": run.status,
        "started_at": run.started_at,
        "ended_at": run.ended_at,
        "last_step": run.last_step,
        "every": run.every,
        "host": run.host,
        "tags": list(run.tags),
        "config": dict(run.config),
        "sa_bin_edges": run.sa_bin_edges,
        "layers": layers,
        "error": run.error,
    }
    return _frame([row], RUN_COLUMNS, floats=[], ints=("id", "last_step", "every"))


def export_frame(
    run: str, what: str = "scalars", db: str | Database | None = None, project: str | None = None
):
    """A run's ``scalars``, ``layers``, ``alerts`` or ``run`` (its metadata: one row) as a
    DataFrame (the newest run with that name).

    >>> export_frame("demo", "scalars", db="sqlite:///tripwire.db").plot(x="step", y="loss")  # doctest: +SKIP
    """
    if what not in WHAT:
        raise ValueError(f"what must be one of {', '.join(WHAT)}, got {what!r}")
    database = db if isinstance(db, Database) else Database(db, create=False)
    database.ensure_schema()
    found = runs.find_run(database, run, project=project)
    build = {
        "scalars": scalars_frame,
        "layers": layers_frame,
        "alerts": alerts_frame,
        "run": run_frame,
    }[what]
    return build(database, found)
