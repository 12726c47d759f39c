"""A trainer alive but hung: its writer thread keeps reporting and no step comes. ``no_progress``
fires once and resolves when steps come again; a busy trainer beside it stays quiet."""

from __future__ import annotations

import pytest

from alerts.config import parse_config
from alerts.notifiers import WebhookNotifier
from alerts.service import AlertService
from storage import Database, RunNotFound, runs
from tests.reliability.helpers import Webhook, start_trainer, tiny_model, train, wait_for

pytestmark = pytest.mark.slow

AFTER_S = 3.0


def _reported(db: Database, name: str, step: int) -> bool:
    try:
        return (runs.find_run(db, name).last_step or -1) >= step
    except RunNotFound:
        return False


def _idle_s(db: Database, name: str) -> float:
    """How long the trainer has kept reporting since it logged its newest step."""
    run = runs.find_run(db, name)
    return (run.last_seen - run.logged_at).total_seconds()


def test_a_hung_trainer_is_flagged_once_and_resolved_when_it_trains_again(sqlite_url, tmp_path):
    db = Database(sqlite_url)
    db.upgrade()
    busy = start_trainer(sqlite_url, "busy", tmp_path / "busy", steps=20)
    hook = Webhook()
    hung = None
    service = AlertService(
        db,
        parse_config({"predictors": {"no_progress": {"after_s": AFTER_S}}}),
        [WebhookNotifier(hook.url)],
    )
    try:
        wait_for(lambda: _reported(db, "busy", 40), 90, "the busy trainer to report")
        hung = start_trainer(sqlite_url, "hung", tmp_path / "hung", steps=20, pause_s=12)
        wait_for(lambda: _reported(db, "hung", 19), 90, "the other trainer to report")
        wait_for(lambda: _idle_s(db, "hung") > AFTER_S + 1, 12, "the trainer to hang")
        assert _idle_s(db, "busy") < AFTER_S  # its steps keep coming

        events = [e for e in service.tick() if e.predictor == "no_progress"]
        assert [(e.kind, e.run, e.notified) for e in events] == [("firing", "hung", True)]
        assert [e for e in service.tick() if e.predictor == "no_progress"] == []  # once

        wait_for(lambda: _reported(db, "hung", 30), 60, "the trainer to train again")
        events = [e for e in service.tick() if e.predictor == "no_progress"]
        assert [(e.kind, e.run) for e in events] == [("resolved", "hung")]
        told = [k for k in hook.keys() if k[1] == "no_progress"]
        assert told == [
            ("hung", "no_progress", "firing", ()),
            ("hung", "no_progress", "resolved", ()),
        ]
    finally:
        for trainer in (busy, hung):
            if trainer is not None:
                trainer.kill()
                trainer.wait(10)
        hook.close()
        db.dispose()


def test_a_healthy_run_that_checks_rarely_is_not_flagged(sqlite_url, tmp_path):
    # The collector sends a step's scalars at its next check: with every=1000 the rows of a
    # healthy run lag its progress by up to 1000 steps, but its progress does not.
    import time

    import collector

    db = Database(sqlite_url)
    db.upgrade()
    model = tiny_model()
    monitor = collector.watch(model, run="rare", db=sqlite_url, every=1000, spool_dir=tmp_path)
    monitor._writer.heartbeat_interval = 0.2
    service = AlertService(db, parse_config({"predictors": {"no_progress": {"after_s": 1.0}}}), [])
    try:
        for step in range(12):
            train(model, monitor, range(step, step + 1))
            time.sleep(0.25)
        wait_for(lambda: _idle_s(db, "rare") < 0.5, 5, "a heartbeat to report the progress")
        assert runs.find_run(db, "rare").last_step == 0  # the rows of steps 1-11 wait
        assert [e for e in service.tick() if e.predictor == "no_progress"] == []
    finally:
        monitor.close()
        db.dispose()
