"""A trainer that started while the database was down checks its schema once it answers: a newer
Tripwire's schema is not written into (as a trainer that started normally refuses it)."""

from __future__ import annotations

import time

import torch
from sqlalchemy import text
from torch import nn

import collector
from storage import Database, StoreUnavailable, runs, stats
from storage.writer import BatchWriter
from tests.storage.test_writer import _scalars, _start


def _stamp(db: Database, revision: str) -> None:
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})


def test_rows_wait_in_the_spool_while_the_schema_is_a_newer_tripwires(db, tmp_path, caplog):
    head = db.schema_status()[1]
    _stamp(db, "0099_from_the_future")
    writer = BatchWriter(
        Database(db.url), "later", spool_dir=tmp_path, schema_checked=False, retry_max_interval=0.1
    )
    writer.put(*_start("later"))
    writer.put("scalars", _scalars(0))
    assert writer.flush()
    assert writer.spooled and writer.unreachable and writer.errors == 0
    assert "newer" in caplog.text
    with db.session() as s:
        assert s.execute(text("SELECT count(*) FROM runs")).scalar() == 0
    _stamp(db, head)  # the database is upgraded (or the trainer's Tripwire is)
    time.sleep(0.6)  # past the writer's backoff
    writer.put("scalars", _scalars(1))
    assert writer.flush()
    writer.close()
    assert not writer.spooled
    run = runs.find_run(db, "run-later")
    assert [p.step for p in stats.scalar_series(db, run.id, ["loss"])] == [0, 1]


def test_a_trainer_started_during_an_outage_leaves_a_newer_schema_alone(
    db, tmp_path, monkeypatch, caplog
):
    real = Database.ensure_schema
    calls = []

    def down_at_start(self):  # noqa: ANN001
        calls.append(1)
        if len(calls) == 1:
            raise StoreUnavailable("connection refused")
        return real(self)

    monkeypatch.setattr(Database, "ensure_schema", down_at_start)
    _stamp(db, "0099_from_the_future")  # meanwhile a newer Tripwire upgraded the database
    model = nn.Linear(3, 3)
    with collector.watch(model, run="outage", db=db.url, every=1, spool_dir=tmp_path) as monitor:
        for step in range(3):
            model(torch.randn(2, 3)).sum().backward()
            monitor.log(step, loss=1.0)
        monitor.flush()
        with db.session() as s:
            assert s.execute(text("SELECT count(*) FROM runs")).scalar() == 0
    assert (tmp_path / f"{monitor.uid}.jsonl").exists()
    assert "newer" in caplog.text
