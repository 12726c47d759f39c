"""Databases in the states the dashboard must handle: empty, a live run, a finished run with
alerts, and a run full of NaN and Inf. Written through the storage API, as the collector does."""

from __future__ import annotations

import math
from datetime import timedelta

from storage import runs, stats
from storage.alerts import AlertWrite, beat, commit_evaluation, record_notification, silence_run
from storage.db import utcnow

EDGES = [-1 + 2 * i / 16 for i in range(17)]
LAYERS = [f"blocks.{b}.{part}" for b in range(3) for part in ("attn.qkv", "attn.proj", "mlp.fc")]
SCENARIOS = ("empty", "live", "alerts", "nan")


def _hist(collapse: float) -> list[int]:
    """16 bins: spread evenly when healthy, folded onto the positive side as ``collapse`` → 1."""
    healthy = [64] * 16
    folded = [0] * 8 + [16, 16, 32, 64, 128, 256, 256, 256]
    return [round((1 - collapse) * h + collapse * f) for h, f in zip(healthy, folded, strict=True)]


def write_run(
    db,
    *,
    name,
    steps=300,
    every=10,
    status="running",
    explode_at=None,
    nan=False,
    started=None,
    uid=None,
    layers=LAYERS,
    error=None,
) -> int:
    """A run of ``steps`` steps; past ``explode_at`` one layer collapses and the loss blows up.
    ``layers=()``: a model with no layer Tripwire monitors (no layer rows, no ``grad_norm``)."""
    started = started or utcnow() - timedelta(minutes=10)
    with db.session() as s:
        run_id = runs.ensure_run(
            s,
            uid=uid or f"uid-{name}",
            project="demo",
            name=name,
            started_at=started,
            every=every,
            sa_bin_edges=EDGES,
            config={"lr": 3e-3, "layers": len(LAYERS)},
            host="test",
        )
        ids = runs.ensure_layers(
            s, run_id, [{"name": n, "position": i, "kind": "Linear"} for i, n in enumerate(layers)]
        )
        scalars, layer_rows = [], []
        for step in range(steps):
            gone = explode_at is not None and step >= explode_at
            loss = 5.0 * math.exp(-step / 200) + (3.0 * (step - explode_at) / 20 if gone else 0.0)
            if nan and step >= steps - 20:
                loss = math.nan
            if nan and step == steps - 30:
                loss = math.inf
            for key, value in (
                ("loss", loss),
                ("lr", 3e-3),
                ("grad_norm", 1.0 + (5.0 if gone else 0)),
            ):
                if key == "grad_norm" and not layers:
                    continue
                scalars.append({"step": step, "key": key, "value": value, "wall_time": float(step)})
            if step % every:
                continue
            for i, layer in enumerate(layers):
                lead = explode_at is not None and step >= explode_at - 40 and i == 4
                collapse = 0.9 if lead or gone else 0.0
                broken = nan and step >= steps - 20 and i % 2 == 0
                layer_rows.append(
                    {
                        "layer": layer,
                        "step": step,
                        "wall_time": float(step),
                        "grad_norm": math.nan if broken else 0.1 * (i + 1),
                        "weight_norm": math.inf if broken else 10.0 + step / 100,
                        "sigma1": 2.0 + step / 100 * (3 if lead else 1),
                        "stable_rank": 5.0 - (3 if lead else 0),
                        "v_drift": 0.01,
                        "sa_pos": 0.5 + collapse / 2,
                        "sa_imbalance": math.nan if broken else 0.03 + collapse,
                        "sa_mean": collapse / 2,
                        "sa_abs_mean": 0.3,
                        "act_max": 4.0,
                        "act_norm_mean": 1.0,
                        "sa_hist": None if broken else _hist(collapse),
                    }
                )
        stats.write_scalars(s, run_id, scalars)
        stats.write_layer_stats(s, run_id, ids, layer_rows)
        runs.touch(s, run_id, last_step=steps - 1, at=utcnow())
        if status != "running":
            runs.finish(s, run_id, status=status, at=utcnow(), error=error)
    return run_id


def add_alerts(db, run_id: int, last_step: int) -> None:
    """A firing critical SA collapse, a resolved loss spike, a failed Slack delivery, a silence."""
    writes = [
        AlertWrite(
            None,
            {
                "predictor": "sa_collapse",
                "layer": LAYERS[4],
                "fingerprint": "a",
                "severity": "critical",
                "state": "firing",
                "first_step": 150,
                "fired_step": 170,
                "last_step": last_step,
                "score": 0.93,
                "message": "SA of blocks.1.attn.proj collapsed to one sign",
            },
            notify=[("slack", "firing")],
        ),
        AlertWrite(
            None,
            {
                "predictor": "loss_spike",
                "layer": None,
                "fingerprint": "b",
                "severity": "warning",
                "state": "resolved",
                "first_step": 210,
                "fired_step": 220,
                "resolved_step": 260,
                "last_step": 260,
                "score": 4.2,
                "message": "loss jumped 4.2σ above its EMA",
            },
        ),
    ]
    ids = commit_evaluation(
        db, run_id, expected_step=None, last_step=last_step, state={}, writes=writes
    )
    record_notification(
        db,
        alert_id=ids[0],
        notifier="slack",
        event="firing",
        status="failed",
        attempts=3,
        error="HTTP 500 from hooks.slack.com",
    )
    beat(db, "scheduler", {"runs": 1, "tick_s": 0.01})
    silence_run(db, run_id, until=utcnow() + timedelta(hours=1), reason="known", created_by="t")


def needle_among_many(db, sweep: int = 600) -> None:
    """An old run, ``Old-Needle`` (uid ``needle``, project ``Archive``), behind ``sweep`` newer
    ones (``lr-<i>``, project ``sweep``): more than a run picker lists at once."""
    now = utcnow()
    with db.session() as s:
        runs.ensure_run(
            s,
            uid="needle",
            project="Archive",
            name="Old-Needle",
            started_at=now - timedelta(days=60),
        )
        for i in range(sweep):
            runs.ensure_run(
                s,
                uid=f"sweep-{i}",
                project="sweep",
                name=f"lr-{i}",
                started_at=now - timedelta(minutes=i),
            )


def populate(db, scenario: str) -> str | None:
    """Fill ``db`` for one scenario; returns the uid of the run to open (None when empty)."""
    if scenario == "empty":
        return None
    if scenario == "live":
        write_run(db, name="live-run", steps=200)
        return "uid-live-run"
    if scenario == "alerts":
        run_id = write_run(db, name="exploded", steps=300, explode_at=200, status="finished")
        write_run(db, name="baseline", steps=300, status="finished")
        add_alerts(db, run_id, 299)
        return "uid-exploded"
    if scenario == "nan":
        write_run(db, name="nan-run", steps=120, nan=True, status="failed")
        return "uid-nan-run"
    raise ValueError(scenario)
