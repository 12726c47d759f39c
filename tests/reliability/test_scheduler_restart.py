"""``tripwire scheduler`` killed with SIGKILL in the middle of its work and started again.

Four runs that blow up are evaluated a few steps per tick while a slow webhook holds each
delivery; the scheduler is killed while a delivery is in flight and others wait, then
restarted. What the webhook received must equal what an uninterrupted scheduler sends over a
copy of the same database: nothing lost, nothing twice.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections import Counter

import pytest
import tomllib

from alerts.config import parse_config
from alerts.notifiers import build_routes
from alerts.service import AlertService
from storage import Database
from storage import alerts as alert_store
from tests.alerts.conftest import exploding_series, make_run, write_steps
from tests.reliability.helpers import TRIPWIRE, Webhook, wait_for

pytestmark = pytest.mark.slow

CONFIG = """
[engine]
max_steps_per_tick = 40

[retry]
max_attempts = 2
initial_backoff_s = 0.05
timeout_s = 5

[predictors.stalled]
enabled = false   # the synthetic runs' heartbeats are old on purpose
"""


def _deliveries(hook: Webhook) -> Counter:
    """One entry per (run, predictor, layer, event): grouping into messages may differ."""
    return Counter(
        (b["run"], b["predictor"], layer, b["event"])
        for b in hook.bodies
        for layer in b["layers"] or [None]
    )


def _seed(db: Database, runs: int = 4) -> None:
    scalars, layers = exploding_series(steps=300, blowup=150)
    for i in range(runs):
        run_id = make_run(db, f"boom-{i}", layers=["fc", "ln_out"])
        write_steps(db, run_id, scalars, layers)


def _oracle(db_path, config_path) -> Counter:
    """What an uninterrupted scheduler sends for the same data."""
    hook = Webhook()
    db = Database(f"sqlite:///{db_path}")
    try:
        config = parse_config(tomllib.loads(config_path.read_text()))
        routes = build_routes(config, env={"TRIPWIRE_WEBHOOK_URL": hook.url})
        service = AlertService(db, config, routes)
        for _ in range(20):  # 300 steps at 40 per tick, and then some
            service.tick()
        return _deliveries(hook)
    finally:
        hook.close()
        db.dispose()


def _start(db_url: str, config_path, hook: Webhook, log) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIPWIRE_")}
    env["TRIPWIRE_WEBHOOK_URL"] = hook.url
    return subprocess.Popen(
        [TRIPWIRE, "scheduler", "--db", db_url, "--config", str(config_path), "--interval", "0.3"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def test_a_killed_scheduler_loses_nothing_and_sends_nothing_twice(tmp_path):
    db_path = tmp_path / "tripwire.db"
    db_url = f"sqlite:///{db_path}"
    db = Database(db_url)
    db.upgrade()
    _seed(db)
    config_path = tmp_path / "tripwire.toml"
    config_path.write_text(CONFIG)
    db.dispose()  # closing the last connection checkpoints the WAL into the file we copy
    shutil.copy(db_path, tmp_path / "oracle.db")
    expected = _oracle(tmp_path / "oracle.db", config_path)
    assert sum(expected.values()) >= 8, expected  # enough deliveries for a kill in the middle
    assert max(expected.values()) == 1

    hook = Webhook(delay_s=1.0)  # each delivery hangs a second: the kill lands mid-delivery
    log = (tmp_path / "scheduler.log").open("w")
    scheduler = _start(db_url, config_path, hook, log)
    try:
        wait_for(lambda: hook.attempts >= 2, 60, "the first deliveries")
        os.kill(scheduler.pid, signal.SIGKILL)
        assert scheduler.wait(10) == -signal.SIGKILL
        sent_before = sum(_deliveries(hook).values())
        assert 0 < sent_before < sum(expected.values())

        hook.delay_s = 0.0
        scheduler = _start(db_url, config_path, hook, log)
        deadline = time.monotonic() + 30
        while _deliveries(hook) != expected and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.5)  # a few more ticks: nothing more may come
        assert _deliveries(hook) == expected
    finally:
        if scheduler.poll() is None:
            scheduler.terminate()
            scheduler.wait(10)
        log.close()
        hook.close()
    notes = alert_store.list_notifications(db, limit=1000)
    assert {n.status for n in notes} <= {"sent", "sending", "failed"}
    db.dispose()
