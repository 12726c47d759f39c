"""``tripwire dashboard`` and ``tripwire up`` as a user runs them: real processes, real ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from dashboard import server
from storage import Database
from storage.alerts import last_beat

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tripwire(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", "from tripwire.cli import main; main()", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,  # its own process group, like a job in a terminal
        # A suite started in the background (`cmd &`) inherits SIGINT ignored, and Python then
        # installs no Ctrl-C handler; a terminal job has the default.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for_line(proc: subprocess.Popen, text: str, timeout: float = 120) -> list[str]:
    """Read the command's output until a line contains ``text``; returns the lines read."""
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if text in line:
                found.set()
                return

    threading.Thread(target=read, daemon=True).start()
    assert found.wait(timeout), f"never printed {text!r}: {''.join(lines)}"
    return lines


def _interrupt(proc: subprocess.Popen) -> str:
    """Ctrl-C to the command; whatever is left of its process group is killed after a minute."""
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # nothing may outlive the test holding the pipe
        out, _ = proc.communicate(timeout=30)
    return out


def test_dashboard_serves_the_database_on_localhost_until_interrupted(real_dbs):
    url, _ = real_dbs["alerts"]
    port = _free_port()
    proc = _tripwire("dashboard", "--db", url, "--port", str(port))
    try:
        _wait_for_line(proc, f"Dashboard: http://localhost:{port}")
        assert server.wait_ready(port, timeout=10)
    finally:
        out = _interrupt(proc)
    assert proc.returncode == 0, out
    assert not server.wait_ready(port, timeout=2), "the server outlived the command"


def test_up_runs_the_scheduler_beside_the_dashboard(real_dbs, tmp_path):
    url = f"sqlite:///{tmp_path / 'up.db'}"
    Database(url).upgrade()
    port = _free_port()
    proc = _tripwire("up", "--db", url, "--port", str(port), "--interval", "1")
    try:
        lines = _wait_for_line(proc, "Scheduler: every 1 s")
        assert any(f"Dashboard: http://localhost:{port}" in line for line in lines)
        db = Database(url)
        deadline = time.monotonic() + 30
        while last_beat(db, "scheduler") is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert last_beat(db, "scheduler") is not None, "the scheduler never ticked"
    finally:
        _interrupt(proc)
    assert not server.wait_ready(port, timeout=2), "the server outlived the command"


def test_dashboard_refuses_a_configuration_it_cannot_load_in_one_line(tmp_path):
    proc = _tripwire("dashboard", "--config", str(tmp_path / "missing.toml"))
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "missing.toml: cannot read the configuration" in out
    assert len(out.strip().splitlines()) == 1


def test_dashboard_refuses_an_unreachable_database_in_one_line():
    proc = _tripwire("dashboard", "--db", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert out.startswith("error: ") and "Traceback" not in out


def test_the_dashboard_process_is_given_the_configuration_by_absolute_path(tmp_path, monkeypatch):
    """It runs in the package's directory, where ``./tripwire.toml`` would be another file."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "team.toml").write_text("[predictors.stalled]\nafter_s = 60\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRIPWIRE_CONFIG", raising=False)
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    assert "TRIPWIRE_CONFIG" not in server.environment(url)
    (tmp_path / "tripwire.toml").write_text("[predictors.stalled]\nafter_s = 120\n")
    assert server.environment(url)["TRIPWIRE_CONFIG"] == str(tmp_path / "tripwire.toml")
    chosen = server.environment(url, config_path="conf/team.toml")["TRIPWIRE_CONFIG"]
    assert chosen == str(tmp_path / "conf" / "team.toml")
