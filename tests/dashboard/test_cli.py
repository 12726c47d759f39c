"""``tripwire dashboard`` and ``tripwire up`` as a user runs them: real processes, real ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
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
    )


def _interrupt(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


def test_dashboard_serves_the_database_on_localhost_until_interrupted(real_dbs):
    url, _ = real_dbs["alerts"]
    port = _free_port()
    proc = _tripwire("dashboard", "--db", url, "--port", str(port))
    try:
        assert server.wait_ready(port, timeout=90, process=proc), "dashboard did not come up"
    finally:
        out = _interrupt(proc)
    assert f"Dashboard: http://localhost:{port}" in out
    assert proc.returncode == 0


def test_up_runs_the_scheduler_beside_the_dashboard(real_dbs, tmp_path):
    url = f"sqlite:///{tmp_path / 'up.db'}"
    Database(url).upgrade()
    port = _free_port()
    proc = _tripwire("up", "--db", url, "--port", str(port), "--interval", "1")
    try:
        assert server.wait_ready(port, timeout=90, process=proc), "dashboard did not come up"
        db = Database(url)
        deadline = time.monotonic() + 30
        while last_beat(db, "scheduler") is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert last_beat(db, "scheduler") is not None, "the scheduler never ticked"
    finally:
        out = _interrupt(proc)
    assert "Scheduler: every 1 s" in out


def test_dashboard_refuses_an_unreachable_database_in_one_line():
    proc = _tripwire("dashboard", "--db", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert out.startswith("error: ") and "Traceback" not in out
