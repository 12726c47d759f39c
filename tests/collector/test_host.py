"""Host copies read later: what the writer thread turns into rows."""

import threading

import torch

import collector
from collector.host import ToHost
from storage import Database, runs, stats
from tests.collector.test_monitor import TinyNet, _batches


def test_a_host_copy_keeps_the_values_it_was_given():
    table = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    copy = ToHost([table, torch.tensor(7)])
    table.mul_(10)  # the caller reuses its tensor before the copy is read
    assert copy.ready()
    assert copy.lists() == [[[1.0, 2.0], [3.0, 4.0]], 7]
    assert ToHost([]).lists() == []


def test_a_check_step_leaves_reading_its_values_back_to_the_writer_thread(
    sqlite_url, tmp_path, monkeypatch
):
    read_on = []
    lists = ToHost.lists

    def recorded(self):
        read_on.append(threading.current_thread().name)
        return lists(self)

    monkeypatch.setattr(ToHost, "lists", recorded)
    model = TinyNet()
    monitor = collector.watch(model, run="later", db=sqlite_url, every=2, spool_dir=tmp_path)
    for step, (x, _) in enumerate(_batches(5)):
        loss = model(x).pow(2).mean()
        loss.backward()
        monitor.log(step, loss=loss)
    monitor.close()
    assert monitor.errors == 0
    assert read_on and set(read_on) == {"tripwire-writer"}  # never the training thread
    db = Database(sqlite_url)
    run = runs.find_run(db, "later")
    layers = len(monitor.layers)
    assert stats.count_rows(db, run.id)[1] == 3 * layers  # checks at steps 0, 2, 4
    series = stats.scalar_series(db, run.id, ["loss", "grad_norm", "weight_norm"])
    by_key = {}
    for point in series:
        by_key.setdefault(point.key, []).append(point.step)
    assert by_key == {"loss": [0, 1, 2, 3, 4], "grad_norm": [0, 2, 4], "weight_norm": [0, 2, 4]}
