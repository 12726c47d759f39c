"""Train a suite run through the public collector API, or reuse its recorded copy.

Each run is recorded once: trained with ``collector.watch`` into the benchmark database, then
exported to ``bench/prediction/recorded/<name>.json.gz`` (scalars, per-layer statistics, SA
histograms; NaN and Inf kept). The export is committed, so the benchmark replays the exact
recorded data into a fresh database without retraining; ``--retrain`` records again. An export
whose stored spec differs from the suite's is stale and is retrained.
"""

from __future__ import annotations

import gzip
import json
import time
from dataclasses import fields
from pathlib import Path

import collector
from bench.prediction.runs import RunSpec, train
from storage import runs as run_store
from storage import stats
from storage.db import Database
from storage.entities import LayerStat
from storage.errors import RunNotFound
from storage.writer import BatchWriter

PROJECT = "bench-prediction"
EVERY = 10
RECORDED = Path(__file__).with_name("recorded")
_STAT_COLUMNS = [f.name for f in fields(LayerStat) if f.name not in ("step", "layer", "wall_time")]


def export_path(name: str) -> Path:
    return RECORDED / f"{name}.json.gz"


def _spec_json(spec: RunSpec) -> dict:
    return json.loads(json.dumps(spec.config()))  # tuples → lists, as stored


def load_export(spec: RunSpec) -> dict | None:
    """The recorded copy of ``spec``, or None if absent or recorded from another spec."""
    path = export_path(spec.name)
    if not path.exists():
        return None
    with gzip.open(path, "rt", encoding="utf-8") as f:
        data = json.load(f)
    return data if data["spec"] == _spec_json(spec) else None


class _LoggingLogits:
    """The training loop's ``log()``: the collector's, plus the logit signals on check steps.

    The collector cannot see inside a fused attention kernel, so the largest attention logit
    and the output ``log Z`` come from the model, the way a user of W&B or MLflow logs a custom
    metric (docs/alerts.md): the suite's models measure them with the collector's helpers
    (``GPT.logit_signals()``, ``DeepMLP.logit_signals()``), here in every forward pass, as
    when the committed runs were recorded.
    """

    def __init__(self, monitor: collector.Monitor, model) -> None:  # noqa: ANN001
        self.monitor = monitor
        self.model = model
        model.measure_logits = True

    def log(self, step: int, loss, lr) -> None:  # noqa: ANN001
        extra = {}
        if self.monitor.is_check_step(step):
            extra = {name: float(v) for name, v in self.model.logit_signals().items()}
        self.monitor.log(step, loss=loss, lr=lr, **extra)


def train_into(spec: RunSpec, db_url: str) -> None:
    """Train ``spec`` with the collector at its defaults (``every=10``) writing to ``db_url``,
    logging the largest attention logit and the output ``log Z`` on check steps."""
    monitors = []

    def attach(model):
        monitor = collector.watch(
            model, run=spec.name, project=PROJECT, db=db_url, every=EVERY, config=spec.config()
        )
        monitors.append(monitor)
        return _LoggingLogits(monitor, model)

    try:
        train(spec, attach)
    finally:
        for monitor in monitors:
            monitor.close()


def export_run(db: Database, spec: RunSpec) -> Path:
    """Write the newest stored run named ``spec.name`` to its export file."""
    run = run_store.find_run(db, spec.name, project=PROJECT)
    layers = [
        {"name": la.name, "position": la.position, "kind": la.kind, "shape": la.shape}
        for la in run_store.layers(db, run.id)
    ]
    scalars = [[p.step, p.key, p.value] for p in stats.scalar_series(db, run.id)]
    rows = [
        [r.layer, r.step, *[getattr(r, c) for c in _STAT_COLUMNS]]
        for r in stats.layer_stats(db, run.id, with_hist=True)
    ]
    data = {
        "spec": _spec_json(spec),
        "run": {"every": run.every, "sa_bin_edges": run.sa_bin_edges, "status": run.status},
        "layers": layers,
        "scalars": scalars,
        "layer_columns": ["layer", "step", *_STAT_COLUMNS],
        "layer_stats": rows,
    }
    RECORDED.mkdir(parents=True, exist_ok=True)
    path = export_path(spec.name)
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=9) as f:
        json.dump(data, f, separators=(",", ":"))
    return path


def replay(data: dict, db: Database) -> None:
    """Write a recorded run into ``db`` through the storage writer, as the collector did."""
    spec = data["spec"]
    now = time.time()
    writer = BatchWriter(db, f"bench-{spec['name']}")
    writer.put(
        "start",
        {
            "run": {
                "uid": f"bench-{spec['name']}",
                "project": PROJECT,
                "name": spec["name"],
                "started_at": now,
                "config": spec,
                "every": data["run"]["every"],
                "sa_bin_edges": data["run"]["sa_bin_edges"],
            },
            "layers": data["layers"],
        },
    )
    writer.put(
        "scalars",
        [{"step": s, "key": k, "value": v, "wall_time": now} for s, k, v in data["scalars"]],
    )
    cols = data["layer_columns"]
    writer.put(
        "layer_stats",
        [dict(zip(cols, row, strict=True), wall_time=now) for row in data["layer_stats"]],
    )
    writer.put("finish", {"status": data["run"]["status"], "at": now})
    writer.close()


def ensure_recorded(spec: RunSpec, db: Database, *, retrain: bool = False) -> str:
    """Make ``spec``'s run present in ``db``; returns ``"reused"`` or ``"trained"``."""
    data = None if retrain else load_export(spec)
    if data is None:
        train_into(spec, db.url)
        export_run(db, spec)
        return "trained"
    if not present(db, spec.name):
        replay(data, db)
    return "reused"


def present(db: Database, name: str) -> bool:
    """Whether ``db`` holds a benchmark run named ``name``."""
    try:
        run_store.find_run(db, name, project=PROJECT)
    except RunNotFound:
        return False
    return True
