"""Two trainer processes and the scheduler on one database at once (SQLite file and PostgreSQL)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from storage import Database, runs, stats
from storage import alerts as alert_store
from tests.reliability.helpers import TRIPWIRE, start_trainer

pytestmark = pytest.mark.slow

STEPS = 120  # every=2: 60 checks of 3 layers per trainer
TROUBLE = ("Traceback", "locked", "deadlock", "collector error", "tick failed")


def test_two_trainers_and_the_scheduler_share_one_database(db_url, tmp_path):
    db = Database(db_url)
    db.upgrade()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIPWIRE_")}
    log = (tmp_path / "scheduler.log").open("w")
    scheduler = subprocess.Popen(
        [TRIPWIRE, "scheduler", "--db", db_url, "--interval", "0.2"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    trainers = [
        start_trainer(db_url, f"trainer-{i}", tmp_path / f"spool-{i}", STEPS, forever=False)
        for i in range(2)
    ]
    try:
        outputs = [t.communicate(timeout=240) for t in trainers]
    finally:
        for t in trainers:
            if t.poll() is None:
                t.kill()
        scheduler.terminate()
        scheduler.wait(30)
        log.close()

    for trainer, (out, err) in zip(trainers, outputs, strict=True):
        assert trainer.returncode == 0, err[-3000:]
        assert not [word for word in TROUBLE if word in err], err[-3000:]
        report = json.loads(out.strip().splitlines()[-1])
        assert report["errors"] == 0
    scheduler_log = (tmp_path / "scheduler.log").read_text()
    assert not [word for word in TROUBLE if word in scheduler_log], scheduler_log[-3000:]
    beat = alert_store.last_beat(db, "scheduler")
    assert beat is not None and beat[1]["errors"] == 0

    for i in range(2):
        run = runs.find_run(db, f"trainer-{i}")
        assert run.status == "finished" and run.last_step == STEPS - 1
        assert [p.step for p in stats.scalar_series(db, run.id, ["loss"])] == list(range(STEPS))
        layer_rows = stats.layer_stats(db, run.id)
        assert len(layer_rows) == 3 * STEPS // 2
        assert len({(r.layer, r.step) for r in layer_rows}) == len(layer_rows)
    db.dispose()
