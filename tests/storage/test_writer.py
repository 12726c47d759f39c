"""The batched writer: batches, idempotent replays, and the spool while the database is away."""

import json
import time

from storage import Database, runs, stats
from storage.writer import BatchWriter


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
