"""PostgreSQL down at the start of a real training run and again in the middle: nothing is lost."""

from __future__ import annotations

import time

import pytest
import torch

import collector
from storage import Database, runs, stats
from tests.reliability.helpers import tiny_model, train, wait_for

pytestmark = pytest.mark.postgres


def _reference_counts(sqlite_url: str, steps: int, tmp_path) -> tuple[int, int]:
    """Row counts of the same run with the database up throughout (the oracle)."""
    model = tiny_model()
    with collector.watch(
        model, run="reference", db=sqlite_url, every=5, sample_size=32, spool_dir=tmp_path / "ref"
    ) as monitor:
        train(model, monitor, range(steps))
    db = Database(sqlite_url)
    counts = stats.count_rows(db, runs.find_run(db, "reference").id)
    db.dispose()
    return counts


def test_training_goes_on_and_every_row_arrives_once(throwaway_pg, sqlite_url, tmp_path):
    torch.set_num_threads(1)
    throwaway_pg.start()
    Database(throwaway_pg.url).upgrade()
    throwaway_pg.stop()  # down before the run starts

    model = tiny_model()
    monitor = collector.watch(
        model, run="outage", db=throwaway_pg.url, every=5, sample_size=32, spool_dir=tmp_path
    )
    spool = monitor._writer  # the writer's spool state, read only
    spool.flush_interval, spool.retry_max_interval = 0.05, 0.2

    started = time.monotonic()
    losses = train(model, monitor, range(0, 60))
    assert monitor.flush(30) and spool.spooled and monitor.run_db_id is None

    throwaway_pg.start()  # back: the spool is replayed ahead of new rows
    losses += train(model, monitor, range(60, 120))
    wait_for(lambda: monitor.flush(5) and not spool.spooled, 30, "the spool to be replayed")
    assert monitor.run_db_id is not None

    throwaway_pg.stop()  # down again mid-run
    losses += train(model, monitor, range(120, 180))
    assert monitor.flush(30) and spool.spooled
    throwaway_pg.start()
    monitor.close()
    training_s = time.monotonic() - started

    assert monitor.errors == 0 and not spool.spooled
    db = Database(throwaway_pg.url)
    run = runs.find_run(db, "outage")
    assert run.status == "finished" and run.last_step == 179
    logged = stats.scalar_series(db, run.id, ["loss"])
    assert [p.step for p in logged] == list(range(180))  # every step, once, in order
    assert [p.value for p in logged] == pytest.approx(losses, rel=1e-6)
    layer_steps = sorted({s.step for s in stats.layer_stats(db, run.id)})
    assert layer_steps == list(range(0, 180, 5))
    assert stats.count_rows(db, run.id) == _reference_counts(sqlite_url, 180, tmp_path)
    db.dispose()
    assert training_s < 60  # the outage cost retries in the writer thread, not training time
