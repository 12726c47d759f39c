"""Machines whose clocks disagree: every time is judged on the database server's clock.

A trainer's clock 10 minutes behind (a laptop's Docker VM after a sleep) and a scheduler's 10
minutes ahead, made real with ``faketime`` (libfaketime) against the real PostgreSQL server.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from datetime import timedelta

import pytest
from sqlalchemy import text

from storage import Database, RunNotFound, runs
from tests.needs import missing
from tests.reliability.helpers import start_trainer, wait_for

pytestmark = pytest.mark.slow

FAKE: dict[str, str] = {}  # (FAKETIME_DONT_FAKE_MONOTONIC=1 makes Python's sleep fail: EINVAL)


def _faketime() -> str:
    found = shutil.which("faketime")
    if found is None:
        missing("no faketime (apt-get install faketime)")
    return found


def _reporting(db: Database, name: str, step: int) -> bool:
    try:
        return (runs.find_run(db, name).last_step or -1) >= step
    except RunNotFound:
        return False


def test_a_trainer_and_a_scheduler_with_skewed_clocks_agree_that_the_run_is_live(pg_url, tmp_path):
    faketime = _faketime()
    db = Database(pg_url)
    db.upgrade()
    trainer = start_trainer(
        pg_url, "behind", tmp_path / "spool", steps=20, prefix=[faketime, "-f", "-10m"], env=FAKE
    )
    try:
        wait_for(lambda: _reporting(db, "behind", 25), 90, "the trainer to report")
        run = runs.find_run(db, "behind")
        with db.session() as s:  # the server's clock, the one that is right here
            now = s.scalar(text("select clock_timestamp() at time zone 'UTC'"))
        for when in (run.started_at, run.heartbeat_at, run.logged_at):
            assert abs(when - now) < timedelta(minutes=1), (when, now)
        assert not run.is_stalled(now, 300)

        ahead = {**os.environ, **FAKE}
        command = [faketime, "-f", "+10m", sys.executable, "-m", "tripwire"]
        listed = subprocess.run(
            [*command, "runs", "--json", "--db", pg_url],
            env=ahead, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        assert [r["status"] for r in json.loads(listed.stdout)] == ["running"]
        tick = subprocess.run(
            [*command, "scheduler", "--once", "--db", pg_url],
            env=ahead, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert tick.returncode == 0, tick.stderr
        assert "stalled" not in tick.stdout
        health = subprocess.run(
            [*command, "health", "--db", pg_url],
            env=ahead, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert health.returncode == 0 and re.search(r"last tick [0-9] s ago", health.stdout), health

        assert trainer.poll() is None, trainer.stderr.read()
    finally:
        os.killpg(trainer.pid, signal.SIGKILL)  # faketime forks: its child trains
        trainer.wait(10)
        db.dispose()


def test_alerts_and_deliveries_a_skewed_scheduler_stores_are_on_the_servers_clock(pg_url, tmp_path):
    import collector
    from storage import alerts as alert_store

    faketime = _faketime()
    db = Database(pg_url)
    db.upgrade()
    monitor = collector.watch(_tiny(), run="blew-up", db=pg_url, every=5, spool_dir=tmp_path)
    for step in range(30):  # NaN to the end: non_finite fires and stays firing
        monitor.log(step, loss=float("nan") if step >= 20 else 1.0)
    monitor.close()
    ahead = {**os.environ, **FAKE}
    tick = subprocess.run(
        [faketime, "-f", "+10m", sys.executable, "-m", "tripwire", "scheduler", "--once",
         "--db", pg_url],
        env=ahead, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert tick.returncode == 0, tick.stderr
    with db.session() as s:
        now = s.scalar(text("select clock_timestamp() at time zone 'UTC'"))
    (alert,) = [a for a in alert_store.list_alerts(db) if a.predictor == "non_finite"]
    sent = alert_store.list_notifications(db)
    assert sent, tick.stdout
    # The dashboard's timeline draws an open alert from created_at to the server's now, and a
    # delivery left `sending` is failed by its created_at against the server's now.
    for when in (alert.created_at, alert.updated_at, *(n.created_at for n in sent)):
        assert abs(when - now) < timedelta(minutes=1), (when, now)
    db.dispose()


def _tiny():
    from torch import nn

    return nn.Linear(2, 2)


def test_the_offset_is_measured_again_after_a_minute(pg_url, monkeypatch):
    # A VM's clock falls 10 minutes behind while its host sleeps: the next measurement sees it.
    import storage.db

    db = Database(pg_url)
    assert db.clock_offset() == timedelta(0)  # this machine's clock is the server's
    real = storage.db.time.time
    monkeypatch.setattr(storage.db.time, "time", lambda: real() - 600)
    assert db.clock_offset() == timedelta(0)  # measured a moment ago: kept
    measured_at, offset = db._offset
    db._offset = (measured_at - storage.db.CLOCK_CHECK_S - 1, offset)  # a minute passes
    assert abs(db.clock_offset() - timedelta(seconds=600)) < timedelta(seconds=5)
    db.dispose()
