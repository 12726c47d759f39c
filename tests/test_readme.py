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
