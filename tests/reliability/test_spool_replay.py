"""A trainer that ends while PostgreSQL is down leaves its rows in the spool; ``tripwire spool
replay`` writes them later, once, in order (the real server, stopped and restarted)."""

from __future__ import annotations

import subprocess

import pytest
import torch

import collector
from storage import Database, runs, stats
from tests.reliability.helpers import TRIPWIRE, tiny_model, train

pytestmark = pytest.mark.postgres


def _tripwire(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([TRIPWIRE, *args], capture_output=True, text=True, timeout=120)


def test_rows_left_in_the_spool_are_replayed_by_the_command(throwaway_pg, sqlite_url, tmp_path):
    torch.set_num_threads(1)
    throwaway_pg.start()
    Database(throwaway_pg.url).upgrade()
    model = tiny_model()
    monitor = collector.watch(
        model, run="cut-off", db=throwaway_pg.url, every=5, sample_size=32, spool_dir=tmp_path
    )
    losses = train(model, monitor, range(0, 30))
    assert monitor.flush(30)
    throwaway_pg.stop()  # the database goes away, then the trainer ends
    losses += train(model, monitor, range(30, 60))
    monitor.close(timeout=10)
    spool = tmp_path / f"{monitor.uid}.jsonl"
    assert spool.exists()

    listed = _tripwire("spool", "list", "--dir", str(tmp_path))
    assert listed.returncode == 0 and monitor.uid in listed.stdout
    assert "steps 30–59" in listed.stdout

    # Into a database that never saw the run: refused, the file kept.
    wrong = _tripwire("spool", "replay", "--dir", str(tmp_path), "--db", sqlite_url)
    assert wrong.returncode == 1 and "not in this database" in wrong.stderr
    assert spool.exists()

    throwaway_pg.start()
    done = _tripwire("spool", "replay", "--dir", str(tmp_path), "--db", throwaway_pg.url)
    assert done.returncode == 0, done.stderr
    assert f"{monitor.uid}: " in done.stdout and not spool.exists()

    db = Database(throwaway_pg.url)
    run = runs.find_run(db, "cut-off")
    logged = stats.scalar_series(db, run.id, ["loss"])
    assert [p.step for p in logged] == list(range(60))  # every step once, in order
    assert [p.value for p in logged] == pytest.approx(losses, rel=1e-6)
    assert sorted({r.step for r in stats.layer_stats(db, run.id)}) == list(range(0, 60, 5))
    assert run.last_step == 59
    again = _tripwire("spool", "replay", "--dir", str(tmp_path), "--db", throwaway_pg.url)
    assert again.returncode == 0 and "no spooled rows" in again.stdout
    db.dispose()


def test_a_run_spooled_from_its_start_can_be_replayed_anywhere(sqlite_url, tmp_path):
    down = "postgresql+psycopg://nobody@127.0.0.1:1/nothing"  # nothing listens on port 1
    model = tiny_model()
    monitor = collector.watch(model, run="never-written", db=down, every=5, spool_dir=tmp_path)
    losses = train(model, monitor, range(12))
    monitor.close(timeout=10)

    done = _tripwire("spool", "replay", "--dir", str(tmp_path), "--db", sqlite_url)
    assert done.returncode == 0, done.stderr
    db = Database(sqlite_url)
    run = runs.find_run(db, "never-written")
    assert run.status == "finished" and run.last_step == 11
    assert [p.value for p in stats.scalar_series(db, run.id, ["loss"])] == pytest.approx(losses)
