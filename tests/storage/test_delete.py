"""Deleting runs removes everything stored for them, on SQLite and PostgreSQL."""

from __future__ import annotations

import io

import torch
from sqlalchemy import text
from torch import nn

import collector
from alerts.config import parse_config
from alerts.notifiers import ConsoleNotifier, Route
from alerts.service import AlertService
from storage import alerts as store
from storage import runs

PER_RUN = ("layers", "layer_stats", "layer_stat_buckets", "scalars", "alerts", "eval_cursors")


def _record(url: str, spool, name: str) -> None:
    """A short run through the collector; its loss turns NaN at step 7 (a critical alert)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))
    with collector.watch(model, run=name, db=url, every=1, spool_dir=spool) as monitor:
        for step in range(40):  # 40 checks: the rollup has rows too
            loss = model(torch.randn(8, 6)).pow(2).mean()
            loss.backward()
            monitor.log(step, loss=loss if step != 7 else torch.tensor(float("nan")))
            model.zero_grad()


def _counts(db) -> dict[str, dict[int, int]]:
    with db.session() as s:
        found = {
            table: dict(
                s.execute(text(f"SELECT run_id, count(*) FROM {table} GROUP BY run_id")).all()
            )
            for table in (*PER_RUN, "silences")
        }
        found["notifications"] = dict(
            s.execute(
                text(
                    "SELECT a.run_id, count(*) FROM notifications n JOIN alerts a"
                    " ON n.alert_id = a.id GROUP BY a.run_id"
                )
            ).all()
        )
        found["all notifications"] = {
            0: s.execute(text("SELECT count(*) FROM notifications")).scalar()
        }
    return found


def test_deleting_a_run_removes_everything_stored_for_it_and_nothing_else(db, tmp_path):
    for name in ("doomed", "kept"):
        _record(db.url, tmp_path, name)
    notifier = ConsoleNotifier("log", stream=io.StringIO())
    AlertService(db, parse_config({}), [Route(notifier)]).tick()
    doomed, kept = runs.find_run(db, "doomed"), runs.find_run(db, "kept")
    store.silence_run(db, doomed.id, until=None, reason="flaky")
    store.silence_run(db, kept.id, until=None, reason="flaky")
    before = _counts(db)
    for table in (*PER_RUN, "silences", "notifications"):
        assert before[table].get(doomed.id, 0) > 0 and before[table].get(kept.id, 0) > 0, table

    assert runs.delete_runs(db, [doomed.id]) == 1

    after = _counts(db)
    for table in (*PER_RUN, "silences", "notifications"):
        assert doomed.id not in after[table], table
        assert after[table][kept.id] == before[table][kept.id], table
    gone = before["notifications"][doomed.id]
    assert after["all notifications"][0] == before["all notifications"][0] - gone
    assert [r.name for r in runs.list_runs(db)] == ["kept"]
    assert runs.delete_runs(db, [doomed.id]) == 0  # already gone
    assert runs.delete_runs(db, []) == 0
