"""Rows the database refuses (a value it cannot store, a run deleted meanwhile) are set aside:
they never hold up the rest of the run, as they did when they were taken for an outage."""

from __future__ import annotations

import logging
import time

import pytest
import torch
from torch import nn

import collector
from storage import Database, runs, stats
from storage.writer import BatchWriter, read_spool, rejected_path
from tests.storage.test_writer import _scalars, _start


def _train(monitor, model, steps, **extra) -> None:
    for step in steps:
        model(torch.randn(4, 6)).sum().backward()
        monitor.log(step, loss=1.0 / (step + 1), **extra)


def test_a_metric_name_with_a_nul_character_is_left_out_and_the_run_goes_on(db, tmp_path, caplog):
    # On PostgreSQL it made the whole run unwritable, reported as "database unavailable".
    model = nn.Linear(6, 3)
    with collector.watch(model, run="nul", db=db.url, every=2, spool_dir=tmp_path) as monitor:
        _train(monitor, model, range(6), **{"acc\x00top1": 0.5})
    assert monitor.errors == 6
    assert caplog.text.count("a name with a NUL character is not stored") == 1
    assert "unavailable" not in caplog.text
    run = runs.find_run(db, "nul")
    assert run.status == "finished" and run.last_step == 5
    assert not [key for key in stats.scalar_keys(db, run.id) if "acc" in key]
    assert [p.step for p in stats.scalar_series(db, run.id, ["loss"])] == list(range(6))
    assert not list(tmp_path.glob("*.jsonl*"))


@pytest.mark.parametrize("field", ["run", "project", "tags"])
def test_a_run_project_or_tag_name_with_a_nul_character_fails_at_start(db, field):
    value = ["ok", "b\x00d"] if field == "tags" else "b\x00d"
    with pytest.raises(ValueError, match="NUL character"):
        collector.watch(nn.Linear(2, 2), db=db.url, **{field: value})


def test_an_exception_message_with_a_nul_character_is_stored_escaped(db, tmp_path):
    with pytest.raises(RuntimeError):
        with collector.watch(nn.Linear(2, 2), run="err", db=db.url, spool_dir=tmp_path) as mon:
            mon.log(0, loss=1.0)
            raise RuntimeError("bad\x00byte")
    assert runs.find_run(db, "err").error.endswith("RuntimeError: bad\\x00byte")


def test_records_the_database_refuses_are_set_aside_and_the_rest_is_written(db, tmp_path, caplog):
    refused = [{"step": 2, "key": None, "value": 1.0, "wall_time": time.time()}]  # NOT NULL
    if db.url.startswith("postgresql"):
        refused.append({"step": 3, "key": "b\x00d", "value": 1.0, "wall_time": time.time()})
    writer = BatchWriter(Database(db.url), "refused", spool_dir=tmp_path, flush_interval=60)
    writer.put(*_start("refused"))
    writer.put("scalars", _scalars(0))
    for row in refused:
        writer.put("scalars", [row])
    writer.put("scalars", _scalars(1))
    writer.put("finish", {"status": "finished", "at": time.time(), "error": None})
    assert writer.flush()
    writer.close()
    assert writer.errors == len(refused) and not writer.spooled and not writer.unreachable
    run = runs.find_run(db, "refused")
    assert run.status == "finished"
    assert [p.step for p in stats.scalar_series(db, run.id, ["loss"])] == [0, 1]
    kept, bad = read_spool(rejected_path(writer.spool_path))
    assert [payload for _, payload in kept] == [[row] for row in refused] and not bad
    assert caplog.text.count("the database refused a scalars record") == 1


def test_a_run_deleted_while_it_trains_has_its_rows_set_aside_not_spooled(db, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    model = nn.Linear(6, 3)
    with collector.watch(model, run="gone", db=db.url, every=2, spool_dir=tmp_path) as monitor:
        _train(monitor, model, range(4))
        monitor.flush()
        runs.delete_runs(db, [runs.find_run(db, "gone").id])
        _train(monitor, model, range(4, 8))
        monitor.flush()
    assert monitor.errors > 0
    assert "unavailable" not in caplog.text
    assert not (tmp_path / f"{monitor.uid}.jsonl").exists()
    kept, _ = read_spool(tmp_path / f"{monitor.uid}.jsonl.rejected")
    steps = {row["step"] for kind, rows in kept if kind == "scalars" for row in rows}
    assert steps == set(range(4, 8))
