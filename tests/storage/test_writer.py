"""The batched writer: batches, idempotent replays, and the spool while the database is away."""

import json
import time
from datetime import timezone

import pytest

from storage import Database, runs, stats
from storage.writer import BatchWriter, read_spool


def _start(uid: str) -> tuple:
    return (
        "start",
        {
            "run": {
                "uid": uid,
                "project": "p",
                "name": f"run-{uid}",
                "started_at": time.time(),
                "every": 1,
            },
            "layers": [{"name": "fc", "position": 0, "kind": "Linear", "shape": [4, 4]}],
        },
    )


def _scalars(step: int) -> list[dict]:
    return [{"step": step, "key": "loss", "value": 1.0 / (step + 1), "wall_time": time.time()}]


def _layer_row(step: int) -> list[dict]:
    return [
        {
            "layer": "fc",
            "step": step,
            "wall_time": time.time(),
            "sigma1": float(step),
            "sa_hist": [step, 1],
        }
    ]


def test_writes_everything_in_batches_and_finishes_the_run(db, tmp_path):
    writer = BatchWriter(db, "w1", spool_dir=tmp_path)
    writer.put(*_start("w1"))
    for step in range(500):
        writer.put("scalars", _scalars(step))
        writer.put("layer_stats", _layer_row(step))
    writer.put("finish", {"status": "finished", "at": time.time()})
    assert writer.flush(30)
    writer.close()
    run = runs.find_run(db, "w1")
    assert run.status == "finished" and run.last_step == 499
    assert stats.count_rows(db, run.id) == (500, 500)
    assert [s.sa_hist for s in stats.layer_stats(db, run.id)][-1] == [499, 1]
    assert not writer.spooled


def test_a_payload_function_is_called_on_the_writer_thread_and_one_that_raises_is_dropped(
    db, tmp_path, caplog
):
    import threading

    called_on = []

    def rows(step):
        def later():
            called_on.append(threading.current_thread().name)
            return _scalars(step)

        return later

    def broken():
        raise RuntimeError("device lost")

    writer = BatchWriter(db, "w-later", spool_dir=tmp_path)
    writer.put(*_start("w-later"))
    writer.put("scalars", rows(0))
    writer.put("layer_stats", broken)
    writer.put("scalars", rows(1))
    writer.put("layer_stats", lambda: _layer_row(1))
    assert writer.flush(30)  # the dropped record counts as done: flush does not hang
    writer.close()
    run = runs.find_run(db, "w-later")
    assert stats.count_rows(db, run.id) == (2, 1)
    assert called_on == ["tripwire-writer"] * 2 and writer.dropped == 1
    assert "could not be read back" in caplog.text and "device lost" in caplog.text


def test_database_down_at_start_and_mid_run_loses_nothing_and_writes_nothing_twice(
    throwaway_pg, tmp_path
):
    """The writer spools while PostgreSQL is stopped and replays in order when it is back."""
    throwaway_pg.start()
    Database(throwaway_pg.url).upgrade()
    throwaway_pg.stop()  # down at the start of the run

    db = Database(throwaway_pg.url)
    writer = BatchWriter(db, "w2", spool_dir=tmp_path, flush_interval=0.05, retry_max_interval=0.2)
    writer.put(*_start("w2"))
    for step in range(0, 100):
        writer.put("scalars", _scalars(step))
        writer.put("layer_stats", _layer_row(step))
    writer.flush(30)
    assert writer.spooled and writer.run_id is None

    throwaway_pg.start()  # back: the spool is replayed before new rows
    for step in range(100, 200):
        writer.put("scalars", _scalars(step))
    deadline = time.monotonic() + 30
    while writer.spooled and time.monotonic() < deadline:
        writer.flush(5)
        time.sleep(0.1)
    assert not writer.spooled and writer.run_id is not None

    throwaway_pg.stop()  # down again in the middle of the run
    for step in range(200, 300):
        writer.put("scalars", _scalars(step))
        writer.put("layer_stats", _layer_row(step))
    writer.flush(30)
    assert writer.spooled
    throwaway_pg.start()
    writer.put("finish", {"status": "finished", "at": time.time()})
    writer.close(30)  # the last attempt replays the spool

    db = Database(throwaway_pg.url)
    run = runs.find_run(db, "w2")
    points = stats.scalar_series(db, run.id, ["loss"])
    assert [p.step for p in points] == list(range(300))  # every row, once, in order
    layer_steps = [s.step for s in stats.layer_stats(db, run.id)]
    assert layer_steps == list(range(100)) + list(range(200, 300))
    assert run.status == "finished"
    assert not writer.spooled


def test_a_spool_left_by_a_dead_process_is_replayed_on_resume(sqlite_url, tmp_path):
    db = Database(sqlite_url)
    db.upgrade()
    spooled = [_start("w3"), ("scalars", _scalars(0)), ("scalars", _scalars(1))]
    (tmp_path / "w3.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in spooled)
    )  # the DB was down
    resumed = BatchWriter(db, "w3", spool_dir=tmp_path)  # collector.watch(..., run_id="w3")
    resumed.put(*_start("w3"))
    resumed.put("scalars", _scalars(2))
    resumed.close()
    run = runs.find_run(db, "w3")
    assert [p.step for p in stats.scalar_series(db, run.id)] == [0, 1, 2]


def _spool_lines(records) -> str:
    return "".join(json.dumps(list(r)) + "\n" for r in records)


def test_a_spool_line_that_does_not_decode_is_skipped_and_every_other_line_kept(tmp_path):
    spool = tmp_path / "w4.jsonl"
    spool.write_text(
        _spool_lines([_start("w4"), ("scalars", _scalars(0))])
        + '["scalars", [{"step": 1, "ke\n'  # a line torn in the middle of the file
        + _spool_lines([("scalars", _scalars(2))])
        + '{"broken json'  # the torn last line a SIGKILL leaves
    )
    records, bad = read_spool(spool)
    assert [kind for kind, _ in records] == ["start", "scalars", "scalars"]
    assert [payload[0]["step"] for kind, payload in records if kind == "scalars"] == [0, 2]
    assert bad == ['["scalars", [{"step": 1, "ke', '{"broken json']


def test_rows_spooled_after_a_torn_last_line_stay_readable(tmp_path):
    """The writer appends to a spool whose last line is torn: the torn line stays one bad line."""
    spool = tmp_path / "w5.jsonl"
    spool.write_text(_spool_lines([_start("w5"), ("scalars", _scalars(0))]) + '{"broken json')
    down = Database("postgresql+psycopg://nobody@127.0.0.1:1/nothing")  # nothing listens there
    writer = BatchWriter(down, "w5", spool_dir=tmp_path)
    writer.put("scalars", _scalars(1))
    writer.close(10)
    records, bad = read_spool(spool)
    assert [payload[0]["step"] for kind, payload in records if kind == "scalars"] == [0, 1]
    assert bad == ['{"broken json'] and writer.unreachable and writer.errors == 0


def test_a_resumed_writer_replays_a_torn_spool_and_keeps_its_bad_lines_aside(db, tmp_path, caplog):
    spool = tmp_path / "w6.jsonl"
    spool.write_text(
        _spool_lines([_start("w6"), ("scalars", _scalars(0))])
        + "{garbage\n"
        + _spool_lines([("scalars", _scalars(1))])
        + '{"broken json'
    )
    resumed = BatchWriter(db, "w6", spool_dir=tmp_path)
    resumed.put(*_start("w6"))
    resumed.put("scalars", _scalars(2))
    assert resumed.flush(10)
    resumed.put("scalars", _scalars(3))  # the thread goes on writing
    resumed.close(10)
    run = runs.find_run(db, "w6")
    assert [p.step for p in stats.scalar_series(db, run.id)] == [0, 1, 2, 3]
    assert not spool.exists() and resumed.errors == 0
    assert (tmp_path / "w6.jsonl.bad").read_text() == '{garbage\n{"broken json\n'
    assert caplog.text.count("2 lines that do not decode") == 1


def test_an_unexpected_failure_of_a_write_is_counted_and_later_batches_are_written(
    db, tmp_path, monkeypatch, caplog
):
    commit = BatchWriter._commit
    calls = []

    def fails_once(self, records):
        calls.append(len(records))
        if len(calls) == 1:
            raise RuntimeError("injected")
        commit(self, records)

    monkeypatch.setattr(BatchWriter, "_commit", fails_once)
    failures = []
    writer = BatchWriter(db, "w7", spool_dir=tmp_path, on_error=lambda: failures.append(1))
    writer.put(*_start("w7"))
    writer.put("scalars", _scalars(0))
    assert writer.flush(10)  # the thread is alive: the flush is answered
    assert writer.errors == 1 and failures == [1] and writer.spooled and not writer.unreachable
    assert "writing 2 records failed" in caplog.text and "injected" in caplog.text
    time.sleep(0.6)  # past the retry backoff
    writer.put("scalars", _scalars(1))
    assert writer.flush(10)
    assert not writer.spooled  # the spooled batch went in with the new one
    run = runs.find_run(db, "w7")
    assert [p.step for p in stats.scalar_series(db, run.id)] == [0, 1]
    writer.put("scalars", _scalars(2))
    writer.close(10)
    assert [p.step for p in stats.scalar_series(db, run.id)] == [0, 1, 2]
    assert writer.errors == 1


def test_the_run_keeps_when_its_trainer_last_logged_and_a_resume_forgets_it(db, tmp_path):
    writer = BatchWriter(db, "logged", spool_dir=tmp_path)
    writer.put(*_start("logged"))
    logged = 1_700_000_000.0  # the trainer's clock at its newest log()
    writer.put("scalars", [{"step": 0, "key": "loss", "value": 1.0, "wall_time": logged - 5}])
    writer.put("scalars", [{"step": 1, "key": "loss", "value": 1.0, "wall_time": logged}])
    assert writer.flush(30)
    run = runs.find_run(db, "logged")
    assert run.logged_at.replace(tzinfo=timezone.utc).timestamp() == logged
    assert run.heartbeat_at > run.logged_at  # it reported since
    writer.put("scalars", [{"step": 0, "key": "loss", "value": 2.0, "wall_time": logged - 60}])
    assert writer.flush(30)  # an older step, replayed late, leaves it
    assert runs.find_run(db, "logged").logged_at == run.logged_at
    writer.close()

    # The first attempt left a spooled row; the resumed writer replays it before its start.
    (tmp_path / "logged.jsonl").write_text(
        _spool_lines([("scalars", [{"step": 2, "key": "loss", "value": 1.0, "wall_time": logged}])])
    )
    resumed = BatchWriter(db, "logged", spool_dir=tmp_path)
    resumed.put(*_start("logged"))
    assert resumed.flush(30)  # not logged yet: a checkpoint can take long to load
    assert runs.find_run(db, "logged").logged_at is None  # the replayed row's time is the past's
    resumed.logged_at = logged + 3600  # what the collector sets at each log(), rows or not
    resumed.put("scalars", [])
    assert resumed.flush(30)
    found = runs.find_run(db, "logged").logged_at.replace(tzinfo=timezone.utc).timestamp()
    assert found == logged + 3600
    resumed.close()


@pytest.mark.parametrize("uid", ["../outside", "/tmp/tripwire-escape/evil", "a/b"])
def test_a_run_id_cannot_put_its_spool_file_outside_the_spool_directory(tmp_path, uid):
    # collector.watch(..., run_id=...) names the spool file: a path there wrote anywhere.
    spool_dir, outside = tmp_path / "spool", tmp_path / "outside.jsonl"
    uid = uid.replace("/tmp/tripwire-escape", str(tmp_path / "escape"))
    down = Database("postgresql+psycopg://nobody@127.0.0.1:1/nothing")  # nothing listens there
    try:
        writer = BatchWriter(down, uid, spool_dir=spool_dir)
    except ValueError as exc:
        assert "run id" in str(exc)
    else:
        writer.put(*_start(uid))
        writer.close(10)
    assert not outside.exists() and not (tmp_path / "escape").exists()
    assert [p.parent for p in tmp_path.rglob("*.jsonl")] in ([], [spool_dir])
