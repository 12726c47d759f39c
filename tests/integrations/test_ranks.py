"""Rank detection, who writes, and halt_on_alert in a plain single-process loop."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

import collector
from collector.distributed import detect, unwrap
from collector.integrations import require
from storage import Database, runs
from tests.integrations.helpers import TinyNet, fire_critical_alert


def test_without_a_process_group_the_environment_decides_who_writes(monkeypatch, tmp_path):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    ranks = detect()
    assert (ranks.rank, ranks.world, ranks.writes, ranks.reduces) == (1, 2, False, False)
    assert detect(per_rank=True).writes
    # A rank that does not write never opens the database: this URL could not be created.
    url = f"sqlite:///{tmp_path / 'missing-dir' / 'tripwire.db'}"
    model = TinyNet()
    with collector.watch(model, run="rank1", db=url, every=1, spool_dir=tmp_path) as monitor:
        model(torch.randn(2, 12)).sum().backward()
        monitor.log(0, loss=1.0)
    assert monitor.errors == 0 and monitor.checks == 1 and monitor.db is None
    assert not (tmp_path / "missing-dir").exists()


def test_wrappers_are_unwrapped_so_layer_names_do_not_change():
    model = TinyNet()
    assert unwrap(nn.DataParallel(model)) is model
    assert unwrap(torch.compile(model, backend="eager")) is model


def test_a_missing_framework_gives_the_pip_install_line():
    with pytest.raises(ImportError, match="needs no-such-pkg: pip install no-such-pkg"):
        require("no_such_module_for_tripwire", "no-such-pkg", "an integration")


def test_importing_the_collector_imports_no_framework():
    code = (
        "import sys, collector, collector.integrations; "
        "print([m for m in ('transformers', 'lightning', 'accelerate') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _step(model: nn.Module, monitor, step: int, loss: float = 1.0) -> None:  # noqa: ANN001
    """One training step; the flush makes the writer poll the alerts after its write."""
    model(torch.randn(2, 12)).sum().backward()
    monitor.log(step, loss=loss)
    monitor.flush()
    model.zero_grad()


def test_halt_on_alert_raises_from_log_in_a_plain_loop(sqlite_url, tmp_path):
    model = TinyNet()
    monitor = collector.watch(
        model, run="halt", db=sqlite_url, every=2, halt_on_alert=True, spool_dir=tmp_path
    )
    with pytest.raises(collector.LossExplosionPredicted, match="non_finite"):
        for step in range(10):
            _step(model, monitor, step)
            if step == 0:
                fire_critical_alert(sqlite_url, monitor.run_db_id)
    assert step == 2  # polled after step 1's write, raised by the next log()
    monitor.close()
    assert runs.find_run(Database(sqlite_url), "halt").status == "finished"


def test_a_resumed_run_is_not_halted_again_by_the_alert_that_stopped_it(sqlite_url, tmp_path):
    # halt_on_alert stops the run so that it can go back to a checkpoint; resumed there
    # (run_id=), the alert of the blow-up, still firing, halted it again at its first write.
    model = TinyNet()
    options = dict(db=sqlite_url, every=2, halt_on_alert=True, spool_dir=tmp_path)
    with pytest.raises(collector.LossExplosionPredicted):
        with collector.watch(model, run="resumed", **options) as first:
            for step in range(10):
                _step(model, first, step, loss=float("nan") if step >= 4 else 1.0)
                if step == 4:
                    fire_critical_alert(sqlite_url, first.run_db_id, step=4)
    monitor = collector.watch(model, run="resumed", run_id=first.uid, **options)
    for step in range(2, 8):  # from the checkpoint at step 2
        _step(model, monitor, step)
    fire_critical_alert(sqlite_url, monitor.run_db_id, step=8, predictor="loss_exploded")
    with pytest.raises(collector.LossExplosionPredicted, match="loss_exploded$"):
        for step in range(8, 12):  # a blow-up of this attempt still halts it
            _step(model, monitor, step)
    monitor.close()


def test_a_new_run_whose_first_alert_poll_failed_is_still_halted(sqlite_url, tmp_path, monkeypatch):
    # Only a resumed run ignores the alerts it finds firing; a new one found this one firing at
    # its first poll that went through (the one before found the database away).
    from storage import StoreUnavailable
    from storage import alerts as alert_store

    real, calls = alert_store.firing_alerts, []

    def away_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise StoreUnavailable("the database is away")
        return real(*args, **kwargs)

    monkeypatch.setattr(alert_store, "firing_alerts", away_once)
    model = TinyNet()
    monitor = collector.watch(
        model, run="new", db=sqlite_url, every=2, halt_on_alert=True, spool_dir=tmp_path
    )
    with pytest.raises(collector.LossExplosionPredicted, match="non_finite"):
        for step in range(10):
            _step(model, monitor, step)  # the first write's poll fails
            if step == 0:
                fire_critical_alert(sqlite_url, monitor.run_db_id)
    monitor.close()
