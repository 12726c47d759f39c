"""`tripwire runs copy`: a run trained against one database, brought whole into another."""

from __future__ import annotations

import pytest
import torch
from sqlalchemy import func, select
from torch import nn

import collector
from storage import Database, StorageError, runs, stats
from storage import alerts as alert_store
from storage._models import SqlEvalCursor, SqlLayerStatBucket
from storage.copy import copy_run
from storage.export import export_frame
from tests.test_cli_data import tripwire


def _train(url: str, tmp_path, name: str = "laptop-run", steps: int = 200) -> collector.Monitor:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = collector.watch(
        model, run=name, project="laptop", db=url, every=5, spool_dir=tmp_path,
        config={"lr": 0.01}, tags=["local"],
    )  # fmt: skip
    for step in range(steps):
        loss = model(torch.randn(8, 6)).pow(2).mean()
        loss.backward()
        monitor.log(step, loss=loss if step != 17 else torch.tensor(float("nan")), lr=0.01)
        opt.step()
        opt.zero_grad()
    return monitor


def _buckets(db: Database, run_id: int) -> int:
    with db.session() as s:
        query = select(func.count()).select_from(SqlLayerStatBucket)
        return s.scalar(query.where(SqlLayerStatBucket.run_id == run_id))


def test_a_run_is_copied_whole_and_its_alerts_are_not_sent_again(sqlite_url, pg_url, tmp_path):
    _train(sqlite_url, tmp_path).close()
    assert tripwire("scheduler", "--once", "--db", sqlite_url).returncode == 0  # non_finite fired
    source = Database(sqlite_url)
    original = runs.find_run(source, "laptop-run")
    Database(pg_url).upgrade()

    result = tripwire("runs", "copy", "laptop-run", "--db", sqlite_url, "--to", pg_url)
    assert result.returncode == 0, result.stderr
    fired = alert_store.list_alerts(source, run_id=original.id)
    assert any(a.predictor == "non_finite" for a in fired)
    assert f"laptop-run: copied 520 scalars, 80 layer rows and {len(fired)} alerts" in result.stdout

    target = Database(pg_url)
    copy = runs.find_run(target, original.uid)
    assert (copy.name, copy.project, copy.status, copy.last_step) == (
        "laptop-run", "laptop", "finished", 199,
    )  # fmt: skip
    assert (copy.started_at, copy.ended_at, copy.config, copy.tags, copy.sa_bin_edges) == (
        original.started_at, original.ended_at, {"lr": 0.01}, ["local"], original.sa_bin_edges,
    )  # fmt: skip
    for what in ("scalars", "layers", "alerts", "run"):
        ours = export_frame(original.uid, what, db=source).drop(columns=["id"], errors="ignore")
        theirs = export_frame(copy.uid, what, db=target).drop(columns=["id"], errors="ignore")
        assert ours.equals(theirs), what
    assert _buckets(target, copy.id) == _buckets(source, original.id) > 0  # the heatmap's rollup
    with target.session() as s:
        assert s.get(SqlEvalCursor, copy.id).last_step == 199

    tick = tripwire("scheduler", "--once", "--db", pg_url)
    assert tick.returncode == 0, tick.stderr
    assert "non_finite" not in tick.stdout and alert_store.list_notifications(target) == []
    kept = alert_store.list_alerts(target, run_id=copy.id)
    assert sorted((a.predictor, a.layer, a.state, a.fired_step) for a in kept) == sorted(
        (a.predictor, a.layer, a.state, a.fired_step) for a in fired
    )

    again = tripwire("runs", "copy", "laptop-run", "--db", sqlite_url, "--to", pg_url)
    assert again.returncode == 1 and "already in the target database" in again.stderr


def test_a_running_run_is_refused_and_a_failed_copy_leaves_nothing(
    sqlite_url, tmp_path, monkeypatch
):
    monitor = _train(sqlite_url, tmp_path, name="live", steps=12)
    monitor.flush()
    source, target = Database(sqlite_url), Database(f"sqlite:///{tmp_path / 'team.db'}")
    target.ensure_schema()
    with pytest.raises(StorageError, match="still running"):
        copy_run(source, target, runs.find_run(source, "live"))
    monitor.close()

    def refused(*args, **kwargs):
        raise StorageError("the target refused a row")

    monkeypatch.setattr(stats, "write_layer_stats", refused)  # after the run and its scalars
    with pytest.raises(StorageError, match="refused"):
        copy_run(source, target, runs.find_run(source, "live"))
    assert runs.list_runs(target) == []


def test_an_alert_a_silence_held_back_is_not_sent_by_the_target(sqlite_url, pg_url, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))
    monitor = collector.watch(model, run="hushed", project="laptop", db=sqlite_url, every=5,
                              spool_dir=tmp_path)  # fmt: skip
    for step in range(100):  # the loss is NaN to the end: non_finite is still firing
        monitor.log(step, loss=float("nan") if step >= 90 else 1.0, lr=0.01)
    monitor.close()
    source = Database(sqlite_url)
    original = runs.find_run(source, "hushed")
    alert_store.silence_run(source, original.id, until=None, reason="known issue")
    assert tripwire("scheduler", "--once", "--db", sqlite_url).returncode == 0
    held = [a for a in alert_store.list_alerts(source, run_id=original.id) if a.state == "firing"]
    assert held and all(a.last_notified_step is None for a in held)
    assert alert_store.list_notifications(source) == []
    Database(pg_url).upgrade()

    copied = tripwire("runs", "copy", "hushed", "--db", sqlite_url, "--to", pg_url)
    assert copied.returncode == 0, copied.stderr
    target = Database(pg_url)
    assert tripwire("scheduler", "--once", "--db", pg_url).returncode == 0
    assert alert_store.list_notifications(target) == []  # it was sent: the silence stayed behind
    (silence,) = alert_store.active_silences(target, target.now())
    assert (silence.run_id, silence.reason) == (runs.find_run(target, "hushed").id, "known issue")


def test_a_run_ended_by_hand_is_copied_once_its_stalled_alert_resolved(sqlite_url, tmp_path):
    from datetime import timedelta

    from storage import utcnow

    source = Database(sqlite_url)
    source.ensure_schema()
    with source.session() as s:  # a trainer killed 20 minutes ago
        runs.ensure_run(s, uid="lost-1", project="p", name="lost",
                        started_at=utcnow() - timedelta(minutes=20))  # fmt: skip
    assert "stalled" in tripwire("scheduler", "--once", "--db", sqlite_url).stdout
    assert tripwire("runs", "end", "lost", "--db", sqlite_url).returncode == 0
    team = f"sqlite:///{tmp_path / 'team.db'}"

    early = tripwire("runs", "copy", "lost", "--db", sqlite_url, "--to", team)
    assert early.returncode == 1  # copied now, the team's scheduler would tell it resolved
    assert "ended with its stalled alert still open" in early.stderr
    assert runs.list_runs(Database(team)) == []

    resolved = tripwire("scheduler", "--once", "--db", sqlite_url)  # told where it fired
    assert "resolved" in resolved.stdout and "stalled" in resolved.stdout
    copied = tripwire("runs", "copy", "lost", "--db", sqlite_url, "--to", team)
    assert copied.returncode == 0, copied.stderr
    assert tripwire("scheduler", "--once", "--db", team).returncode == 0
    assert alert_store.list_notifications(Database(team)) == []


@pytest.mark.parametrize("change", ["deleted", "resumed"])
def test_a_run_that_changes_in_the_source_while_it_is_copied_is_not_copied(
    sqlite_url, tmp_path, monkeypatch, change
):
    _train(sqlite_url, tmp_path, name="moving", steps=40).close()
    source, target = Database(sqlite_url), Database(f"sqlite:///{tmp_path / 'team.db'}")
    target.ensure_schema()
    run = runs.find_run(source, "moving")
    read = stats.layer_stats

    def meanwhile(db, run_id, **window):  # the copy is halfway through reading the source
        if change == "deleted":
            runs.delete_runs(source, [run.id])
        else:
            resumed = collector.watch(
                torch.nn.Linear(6, 1), db=sqlite_url, run_id=run.uid, resume_from=20,
                spool_dir=tmp_path,
            )  # fmt: skip
            resumed.close()
        monkeypatch.setattr(stats, "layer_stats", read)
        return read(db, run_id, **window)

    monkeypatch.setattr(stats, "layer_stats", meanwhile)
    with pytest.raises(StorageError, match="changed in the source while it was copied"):
        copy_run(source, target, run)
    assert runs.list_runs(target) == []
