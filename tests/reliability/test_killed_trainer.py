"""A trainer killed with SIGKILL: its run shows as stalled and the ``stalled`` alert fires once."""

from __future__ import annotations

import os
import signal
from datetime import timedelta

import pytest

from alerts.config import parse_config
from alerts.notifiers import WebhookNotifier
from alerts.service import AlertService
from storage import Database, RunNotFound, runs, utcnow
from tests.reliability.helpers import Webhook, start_trainer, tiny_model, wait_for

pytestmark = pytest.mark.slow


def _run_reporting(db: Database, name: str, step: int) -> bool:
    try:
        run = runs.find_run(db, name)
    except RunNotFound:
        return False
    return (run.last_step or -1) >= step


def test_a_killed_trainer_is_stalled_and_alerted_once(sqlite_url, tmp_path):
    db = Database(sqlite_url)
    db.upgrade()
    trainer = start_trainer(sqlite_url, "doomed", tmp_path / "spool", steps=20)
    hook = Webhook()
    try:
        wait_for(lambda: _run_reporting(db, "doomed", 25), 90, "the trainer to report")
        assert trainer.poll() is None, trainer.stderr.read()
        os.kill(trainer.pid, signal.SIGKILL)  # no atexit, no close(), no final flush
        assert trainer.wait(10) == -signal.SIGKILL

        offset = timedelta(0)
        config = parse_config({"predictors": {"stalled": {"after_s": 60.0}}})
        service = AlertService(
            db, config, [WebhookNotifier(hook.url)], clock=lambda: utcnow() + offset
        )
        run = runs.find_run(db, "doomed")
        assert run.status == "running" and not run.is_stalled(utcnow(), 60.0)
        fresh = [e for e in service.tick() if e.predictor == "stalled"]
        assert fresh == []  # it reported a moment ago

        offset = timedelta(seconds=65)
        events = [e for e in service.tick() if e.predictor == "stalled"]
        assert [(e.kind, e.run, e.notified) for e in events] == [("firing", "doomed", True)]
        assert runs.find_run(db, "doomed").is_stalled(utcnow() + offset, 60.0)
        for later in (120, 600, 6000):  # it stays stalled; nothing is sent again
            offset = timedelta(seconds=later)
            assert [e for e in service.tick() if e.predictor == "stalled"] == []
        stalled = [k for k in hook.keys() if k[1] == "stalled"]
        assert stalled == [("doomed", "stalled", "firing", ())]
    finally:
        if trainer.poll() is None:
            trainer.kill()
        trainer.wait(10)
        hook.close()
        db.dispose()


def test_a_stalled_run_ended_by_hand_resolves_its_alert(sqlite_url, tmp_path):
    from sqlalchemy import update

    import collector
    from storage._models import SqlRun
    from tests.test_cli_data import tripwire

    db = Database(sqlite_url)
    db.upgrade()
    trainer = start_trainer(sqlite_url, "lost-node", tmp_path / "spool", steps=20)
    hook = Webhook()
    live = None
    try:
        wait_for(lambda: _run_reporting(db, "lost-node", 25), 90, "the trainer to report")
        os.kill(trainer.pid, signal.SIGKILL)
        assert trainer.wait(10) == -signal.SIGKILL
        seen = runs.find_run(db, "lost-node").heartbeat_at
        with db.session() as s:  # ten minutes pass
            s.execute(
                update(SqlRun)
                .where(SqlRun.name == "lost-node")
                .values(heartbeat_at=seen - timedelta(minutes=10))
            )
        service = AlertService(db, parse_config({}), [WebhookNotifier(hook.url)])
        assert [(e.predictor, e.kind) for e in service.tick() if e.predictor == "stalled"] == [
            ("stalled", "firing")
        ]
        live = collector.watch(tiny_model(), run="alive", db=sqlite_url, spool_dir=tmp_path)
        live.flush()
        refused = tripwire("runs", "end", "alive", "--db", sqlite_url)
        assert (
            refused.returncode == 1 and "not stalled, not ended: alive (running)" in refused.stderr
        )

        ended = tripwire("runs", "end", "lost-node", "--db", sqlite_url)
        assert ended.returncode == 0, ended.stderr
        assert "lost-node: marked failed (last reported at " in ended.stdout
        run = runs.find_run(db, "lost-node")
        assert run.status == "failed" and "ended with `tripwire runs end`" in run.error
        events = [(e.predictor, e.kind, e.notified) for e in service.tick()]
        assert ("stalled", "resolved", True) in events
        assert [k[2] for k in hook.keys() if k[1] == "stalled"] == ["firing", "resolved"]
        again = tripwire("runs", "end", "lost-node", "--db", sqlite_url)
        assert again.returncode == 1 and "lost-node (failed)" in again.stderr
    finally:
        if live is not None:
            live.close()
        if trainer.poll() is None:
            trainer.kill()
        trainer.wait(10)
        hook.close()
        db.dispose()
