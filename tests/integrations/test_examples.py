"""Every script in examples/ runs as its users would run it, in seconds, and writes its run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from storage import Database, runs
from tests import needs
from tests.integrations.helpers import free_port, layer_table

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


GLOO_EXIT_ABORT = "terminate called without an active exception"
"""What PyTorch's gloo teardown prints when it aborts a rank at interpreter exit, now and then,
with or without Tripwire (``tests.integrations.helpers.exit_without_shutdown``)."""


def _run(command: list[str], url: str, tmp_path: Path, *, gloo: bool = False) -> str:
    """Run an example; with ``gloo``, a rank that gloo aborted at exit is let pass (the caller
    checks that everything was written all the same)."""
    env = {**os.environ, "TRIPWIRE_SPOOL_DIR": str(tmp_path / "spool"), "PYTHONPATH": str(REPO)}
    args = ["--db", url, "--steps", "6", "--every", "2"]
    proc = subprocess.run(
        command + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    aborted_at_exit = gloo and GLOO_EXIT_ABORT in proc.stderr and "(SIGABRT)" in proc.stderr
    assert proc.returncode == 0 or aborted_at_exit, proc.stderr[-4000:]
    return proc.stdout


@pytest.mark.parametrize(
    ("script", "package", "run_name", "checked"),
    [
        ("plain_loop.py", "torch", "plain-loop", {0, 2, 4}),
        ("huggingface_trainer.py", "transformers", "hf-tiny-llama", {2, 4, 6}),
        ("lightning_fit.py", "lightning", "lightning-mlp", {0, 2, 4}),
        ("accelerate_loop.py", "accelerate", "accelerate-mlp", {0, 2, 4}),
    ],
)
def test_example(script, package, run_name, checked, sqlite_url, tmp_path):
    needs.module(package)
    out = _run([sys.executable, str(REPO / "examples" / script)], sqlite_url, tmp_path)
    assert f"run {run_name!r}" in out and "0 errors" in out
    run = runs.find_run(Database(sqlite_url), run_name)
    assert run.status == "finished"
    assert {step for step, _ in layer_table(sqlite_url, run_name)} == checked


def test_plain_loop_under_torchrun_writes_one_run(sqlite_url, tmp_path):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    launcher += ["--master-port", str(free_port()), str(REPO / "examples" / "plain_loop.py")]
    out = _run(launcher, sqlite_url, tmp_path, gloo=True)
    assert "run 'plain-loop'" in out and "0 errors" in out  # rank 0 finished and said so
    (run,) = runs.list_runs(Database(sqlite_url))
    assert run.status == "finished"
    assert run.name == "plain-loop" and run.config["tripwire"]["world_size"] == 2
    fc = layer_table(sqlite_url, "plain-loop")[(0, "blocks.0.1")]
    assert sum(fc.sa_hist) == 16 * 32  # both ranks' tokens: 8 sequences of 32 each
