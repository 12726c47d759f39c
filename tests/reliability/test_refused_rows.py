"""Rows the database refuses (a value it cannot store, a run deleted meanwhile) are set aside:
they never hold up the rest of the run, as they did when they were taken for an outage."""

from __future__ import annotations

import json
import logging
import time

import pytest
import torch
from torch import nn

import collector
from storage import Database, StoreUnavailable, runs, stats
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


def test_a_run_or_project_name_too_long_to_store_fails_at_start(db):
    with pytest.raises(ValueError, match="over 255"):
        collector.watch(nn.Linear(2, 2), db=db.url, project="p" * 256)
    with pytest.raises(ValueError, match="over 512"):
        collector.watch(nn.Linear(2, 2), db=db.url, run="r" * 513)


def test_every_record_of_a_run_whose_start_was_refused_is_kept_aside(db, tmp_path):
    # Before, the records after the first batch were dropped without a trace.
    start = _start("unnamed")
    start[1]["run"]["name"] = None  # NOT NULL
    writer = BatchWriter(Database(db.url), "unnamed", spool_dir=tmp_path, flush_interval=60)
    writer.put(*start)
    writer.put("scalars", _scalars(0))
    assert writer.flush()
    for step in (1, 2):
        writer.put("scalars", _scalars(step))
        assert writer.flush()
    writer.put("finish", {"status": "finished", "at": time.time(), "error": None})
    writer.close()
    kept, _ = read_spool(rejected_path(writer.spool_path))
    assert [kind for kind, _ in kept] == ["start", "scalars", "scalars", "scalars", "finish"]
    assert writer.rejected == 5 and writer.rows_written == 0 and not writer.spooled


def test_records_set_aside_before_an_outage_are_not_set_aside_twice(db, tmp_path, monkeypatch):
    writer = BatchWriter(Database(db.url), "midway", spool_dir=tmp_path, flush_interval=60)
    refused = [{"step": 1, "key": None, "value": 1.0, "wall_time": time.time()}]
    real, calls = BatchWriter._commit, []

    def away_at_the_fourth(self, records):  # noqa: ANN001
        calls.append(len(records))
        if len(calls) == 4:  # the batch, then apart: start, the refused one, then down
            raise StoreUnavailable("the database is away")
        return real(self, records)

    monkeypatch.setattr(BatchWriter, "_commit", away_at_the_fourth)
    for record in (_start("midway"), ("scalars", refused), ("scalars", _scalars(2))):
        writer.put(*record)
    assert writer.flush()
    assert writer.spooled and writer.rejected == 1
    monkeypatch.setattr(BatchWriter, "_commit", real)
    writer._retry_at = 0.0  # the database is back: retry at once
    writer.put("scalars", _scalars(3))
    assert writer.flush()
    writer.close()
    assert not writer.spooled and writer.rejected == 1
    kept, _ = read_spool(rejected_path(writer.spool_path))
    assert [payload for _, payload in kept] == [refused]
    run = runs.find_run(db, "run-midway")
    assert [p.step for p in stats.scalar_series(db, run.id, ["loss"])] == [2, 3]


def test_spool_replay_says_which_records_the_database_refused(sqlite_url, tmp_path):
    from click.testing import CliRunner

    from tripwire.cli import cli

    refused = [{"step": 1, "key": None, "value": 1.0, "wall_time": time.time()}]
    lines = [_start("left"), ("scalars", _scalars(0)), ("scalars", refused)]
    (tmp_path / "left.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    result = CliRunner().invoke(
        cli, ["spool", "replay", "--db", sqlite_url, "--dir", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "1 rows written, but the database refused 1 records: kept in" in result.output
    listed = CliRunner().invoke(cli, ["spool", "list", "--dir", str(tmp_path)])
    assert "1 records the database refused, not replayed:" in listed.output
