"""A spool file torn by a kill or a full disk, and a write that fails for no known reason: every
good row still arrives, the commands answer without a traceback, and the writer thread lives on
(real training loops, real SQLite files, real ``tripwire`` processes)."""

from __future__ import annotations

import subprocess
import time

import pytest

import collector
from storage import Database, runs, stats
from storage.writer import BatchWriter
from tests.reliability.helpers import TRIPWIRE, tiny_model, train

DOWN = "postgresql+psycopg://nobody@127.0.0.1:1/nothing"  # nothing listens on port 1
GARBAGE = '["scalars", [{"step": 3, "ke'  # torn mid-file: the trainer went on appending after it
TORN = '{"broken json'  # the last line a SIGKILL leaves


pytestmark = pytest.mark.usefixtures("one_thread")


def _tripwire(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([TRIPWIRE, *args], capture_output=True, text=True, timeout=120)


def _spooled_run(name: str, spool_dir, steps: range) -> tuple[str, list[float]]:
    """A run that never reached its database: its uid and losses; every row is in the spool."""
    model = tiny_model()
    monitor = collector.watch(
        model, run=name, db=DOWN, every=5, sample_size=32, spool_dir=spool_dir
    )
    losses = train(model, monitor, steps)
    monitor.close(timeout=10)
    return monitor.uid, losses


def _damage(path) -> None:
    """A bad line in the middle and a torn last line, every good line kept."""
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3]) + GARBAGE + "\n" + "".join(lines[3:]) + TORN)


def test_spool_commands_list_and_replay_every_good_row_of_a_damaged_file(sqlite_url, tmp_path):
    damaged, damaged_losses = _spooled_run("damaged", tmp_path, range(12))
    clean, clean_losses = _spooled_run("clean", tmp_path, range(7))
    _damage(tmp_path / f"{damaged}.jsonl")

    listed = _tripwire("spool", "list", "--dir", str(tmp_path))
    assert listed.returncode == 0, listed.stderr
    assert "Traceback" not in listed.stderr and clean in listed.stdout
    assert "2 unreadable lines" in listed.stdout and "steps 0–11" in listed.stdout

    done = _tripwire("spool", "replay", "--dir", str(tmp_path), "--db", sqlite_url)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert f"{damaged}: 2 unreadable lines skipped, kept in" in done.stderr
    assert not list(tmp_path.glob("*.jsonl"))  # both replayed
    bad = (tmp_path / f"{damaged}.jsonl.bad").read_text()
    assert bad == f"{GARBAGE}\n{TORN}\n"  # nothing destroyed without a trace

    db = Database(sqlite_url)
    for name, losses in (("damaged", damaged_losses), ("clean", clean_losses)):
        run = runs.find_run(db, name)
        logged = stats.scalar_series(db, run.id, ["loss"])
        assert [p.value for p in logged] == pytest.approx(losses, rel=1e-6)
        assert run.status == "finished" and run.last_step == len(losses) - 1
    db.dispose()


def test_a_resumed_run_replays_its_damaged_spool_and_goes_on_writing(sqlite_url, tmp_path, caplog):
    uid, losses = _spooled_run("resumed", tmp_path, range(12))
    _damage(tmp_path / f"{uid}.jsonl")
    caplog.clear()  # the first run's outage is over

    model = tiny_model()
    monitor = collector.watch(
        model, run="resumed", db=sqlite_url, every=5, sample_size=32, spool_dir=tmp_path, run_id=uid
    )
    losses += train(model, monitor, range(12, 24))
    assert monitor.flush(10)
    started = time.monotonic()
    monitor.close(timeout=10)
    assert time.monotonic() - started < 5
    assert monitor.errors == 0 and not monitor._writer._thread.is_alive()
    assert "unreachable" not in caplog.text and "2 lines that do not decode" in caplog.text

    db = Database(sqlite_url)
    run = runs.find_run(db, "resumed")
    logged = stats.scalar_series(db, run.id, ["loss"])
    assert [p.step for p in logged] == list(range(24))
    assert [p.value for p in logged] == pytest.approx(losses, rel=1e-6)
    assert run.status == "finished" and run.last_step == 23
    assert not (tmp_path / f"{uid}.jsonl").exists()
    assert (tmp_path / f"{uid}.jsonl.bad").read_text() == f"{GARBAGE}\n{TORN}\n"
    db.dispose()


def test_an_unexpected_write_failure_is_counted_and_later_steps_are_written(
    sqlite_url, tmp_path, monkeypatch
):
    commit, calls = BatchWriter._commit, []

    def fails_once(self, records):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("injected")
        commit(self, records)

    monkeypatch.setattr(BatchWriter, "_commit", fails_once)
    model = tiny_model()
    monitor = collector.watch(
        model, run="hiccup", db=sqlite_url, every=5, sample_size=32, spool_dir=tmp_path
    )
    losses = train(model, monitor, range(10))
    assert monitor.flush(10) and monitor.errors == 1
    time.sleep(0.6)  # past the writer's retry backoff
    losses += train(model, monitor, range(10, 20))
    assert monitor.flush(10) and not monitor._writer.spooled

    db = Database(sqlite_url)
    run = runs.find_run(db, "hiccup")
    assert [p.step for p in stats.scalar_series(db, run.id, ["loss"])] == list(range(20))
    monitor.close(timeout=10)
    assert monitor.errors == 1
    assert runs.find_run(db, "hiccup").status == "finished"
    db.dispose()


def test_a_write_that_keeps_failing_neither_hangs_close_nor_blames_the_database(
    sqlite_url, tmp_path, monkeypatch, caplog
):
    def fails(self, records):
        raise RuntimeError("injected")

    monkeypatch.setattr(BatchWriter, "_commit", fails)
    model = tiny_model()
    monitor = collector.watch(
        model, run="broken", db=sqlite_url, every=5, sample_size=32, spool_dir=tmp_path
    )
    train(model, monitor, range(10))
    started = time.monotonic()
    monitor.close(timeout=10)
    assert time.monotonic() - started < 5
    assert monitor.errors >= 1 and (tmp_path / f"{monitor.uid}.jsonl").exists()  # kept, not lost
    assert "unreachable" not in caplog.text and "writing them failed" in caplog.text
    assert f"tripwire spool replay --dir {tmp_path} --db URL" in caplog.text  # the way out
