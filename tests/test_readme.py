"""The README's API example runs as written (with a tiny model, loader and scheduler around it)."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from storage import Database, runs, stats

README = Path(__file__).resolve().parents[1] / "README.md"


def _api_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Use it in your training loop", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(32, 16)
        self.hidden = nn.Linear(16, 16)
        self.out = nn.Linear(16, 32)

    def forward(self, x, y):
        logits = self.out(torch.relu(self.hidden(self.embed(x))))
        return nn.functional.cross_entropy(logits.reshape(-1, 32), y.reshape(-1))


def test_the_readme_api_example_records_a_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the example writes sqlite:///tripwire.db in the working directory
    monkeypatch.setenv("TRIPWIRE_SPOOL_DIR", str(tmp_path / "spool"))
    torch.manual_seed(0)
    model = TinyLM()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    loader = [(torch.randint(0, 32, (4, 8)), torch.randint(0, 32, (4, 8))) for _ in range(25)]

    exec(
        _api_example(),
        {"model": model, "optimizer": optimizer, "scheduler": scheduler, "loader": loader},
    )

    db = Database(f"sqlite:///{tmp_path / 'tripwire.db'}")
    run = runs.find_run(db, "gpt-small-lr3e-3")
    assert run.status == "finished" and run.last_step == 24 and run.config == {"lr": 3e-3}
    assert [layer.name for layer in runs.layers(db, run.id)] == ["hidden", "out"]
    assert stats.count_rows(db, run.id)[1] == 2 * 3  # two layers, checks at steps 0, 10, 20


def _sigterm_recipe() -> str:
    text = README.read_text(encoding="utf-8")
    return re.search(r"`(signal\.signal\(signal\.SIGTERM, .*?)`", text).group(1)


def test_the_readme_sigterm_recipe_marks_a_preempted_run_failed(tmp_path):
    import signal
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 't.db'}"
    script = f"""
import signal, sys, time, torch, collector
from torch import nn
model = nn.Linear(4, 4)
monitor = collector.watch(model, run="preempted", db={url!r}, spool_dir={str(tmp_path)!r})
{_sigterm_recipe()}
print("ready", flush=True)
for step in range(100_000):
    model(torch.randn(2, 4)).sum().backward()
    monitor.log(step, loss=1.0)
    time.sleep(0.01)
"""
    root = README.parent
    trainer = subprocess.Popen([sys.executable, "-c", script], cwd=root, stdout=subprocess.PIPE)
    try:
        assert trainer.stdout.readline().strip() == b"ready"
        trainer.send_signal(signal.SIGTERM)
        assert trainer.wait(30) == 128 + signal.SIGTERM
    finally:
        trainer.kill()
    run = runs.find_run(Database(url), "preempted")
    assert (run.status, run.error) == ("failed", "preempted")


class Regression(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(8, 32)
        self.out = nn.Linear(32, 1)

    def forward(self, x, y):
        return nn.functional.mse_loss(self.out(torch.relu(self.hidden(x))), y)


def _resume_example() -> str:
    section = README.read_text(encoding="utf-8").split("### Stop, go back, resume", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_resume_example_goes_back_past_a_real_blow_up(tmp_path, monkeypatch):
    # A corrupt shard (six batches of inputs 10^6 too large) wrecks the weights; the scheduler's
    # non_finite alert halts the loop, which goes back to a checkpoint from before and goes on.
    import copy
    import threading
    import time

    from alerts.service import AlertService
    from storage import alerts as alert_store

    monkeypatch.chdir(tmp_path)  # the example writes sqlite:///tripwire.db in the working directory
    monkeypatch.setenv("TRIPWIRE_SPOOL_DIR", str(tmp_path / "spool"))
    torch.manual_seed(0)
    model = Regression()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def shard():
        for i in range(100_000):
            x = torch.randn(16, 8) * (1e6 if 150 <= i < 156 else 1.0)
            time.sleep(0.003)  # a real step takes time: the alarm comes within seconds
            yield x, x.sum(dim=1, keepdim=True)

    checkpoints: dict[int, tuple] = {}

    def save(model_, optimizer_, resumes_at):
        checkpoints[resumes_at] = copy.deepcopy((model_.state_dict(), optimizer_.state_dict()))

    restored = []

    def restore(model_, optimizer_, before):
        at = max(s for s in checkpoints if s <= before)
        model_.load_state_dict(checkpoints[at][0])
        optimizer_.load_state_dict(checkpoints[at][1])
        optimizer_.zero_grad()
        restored.append((before, at))
        return at

    db = Database(f"sqlite:///{tmp_path / 'tripwire.db'}")
    db.upgrade()
    stop = threading.Event()
    scheduler = threading.Thread(target=AlertService(db).run_forever, args=(0.2, stop))
    scheduler.start()
    try:
        names = {"model": model, "optimizer": optimizer, "batches": shard(), "total_steps": 3000}
        exec(_resume_example(), {**names, "save": save, "restore": restore})
    finally:
        stop.set()
        scheduler.join()

    assert len(restored) == 1 and restored[0][0] >= 150 and restored[0][1] == 101
    run = runs.find_run(db, "gpt-small")
    assert run.status == "finished" and run.last_step == 2999
    loss = {p.step: p.value for p in stats.scalar_series(db, run.id, ["loss"])}
    assert sorted(loss) == list(range(3000))
    assert all(value == value and value < 1e3 for value in loss.values())  # no NaN, no blow-up
    ended = [a for a in alert_store.list_alerts(db, run_id=run.id) if a.predictor == "non_finite"]
    assert ended and all((a.details or {}).get("rewound_to") == 101 for a in ended)
    assert not alert_store.firing_alerts(db, run.id, severity="critical")
