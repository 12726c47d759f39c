"""Who watches the watcher: the scheduler's dead man's switch ping and `tripwire health`."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from alerts.scheduler import safe_evaluate
from alerts.service import AlertService
from alerts.watchdog import HeartbeatPing
from storage import Database, utcnow
from storage import alerts as store


class PingServer:
    """A loopback HTTP server that counts GET requests and answers ``status``."""

    def __init__(self, status: int = 200):
        self.status = status
        self.paths: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                server.paths.append(self.path)
                self.send_response(server.status)
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/ping/0f6e-secret-uuid"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _tripwire(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tripwire", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        **kw,
    )


def test_the_scheduler_pings_its_dead_mans_switch_after_a_good_tick(sqlite_url):
    server = PingServer()
    env = {**os.environ, "TRIPWIRE_HEARTBEAT_URL": server.url}
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "tripwire", "scheduler", "--interval", "0.5", "--db", sqlite_url],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not server.paths and time.monotonic() < deadline:
            assert scheduler.poll() is None, scheduler.stdout.read()
            time.sleep(0.2)
        time.sleep(2)  # four more ticks: at most one request a minute
        assert server.paths == ["/ping/0f6e-secret-uuid"]
    finally:
        scheduler.terminate()
        out, _ = scheduler.communicate(timeout=30)
        server.close()
    assert "heartbeat: HeartbeatPing(http://127.0.0.1:" in out
    assert "secret" not in out

    once = _tripwire("scheduler", "--once", "--db", sqlite_url, env={"TRIPWIRE_HEARTBEAT_URL": ""})
    assert once.returncode == 0, once.stderr  # unset: no ping, no complaint


def test_no_ping_when_the_evaluation_fails_and_a_failed_ping_is_logged_unshown(caplog):
    server = PingServer(status=500)
    now = [0.0]
    ping = HeartbeatPing(server.url, clock=lambda: now[0])
    try:
        down = AlertService(Database("postgresql+psycopg://nobody@127.0.0.1:1/none"))
        safe_evaluate(down, ping)  # the database is down: the switch must not hear "all is well"
        assert server.paths == [] and ping.sent == ping.failed == 0

        with caplog.at_level(logging.WARNING, logger="tripwire.alerts"):
            assert ping.ping() is False  # the switch's service answered 500
        assert ping.failed == 1 and "heartbeat http://127.0.0.1:" in caplog.text
        assert "HTTP 500" in caplog.text and "secret" not in caplog.text
        now[0] = 30.0
        assert ping.ping() is False and len(server.paths) == 1  # not yet a minute later
        server.status = 200
        now[0] = 61.0
        assert ping.ping() is True and ping.sent == 1 and len(server.paths) == 2
    finally:
        server.close()


def test_a_heartbeat_url_must_be_https_and_is_never_shown(sqlite_url):
    refused = _tripwire(
        "scheduler", "--once", "--db", sqlite_url,
        env={"TRIPWIRE_HEARTBEAT_URL": "http://hc.example.com/ping/0f6e-secret-uuid"},
    )  # fmt: skip
    assert refused.returncode == 1
    assert "TRIPWIRE_HEARTBEAT_URL: must be an https URL" in refused.stderr
    assert "secret" not in refused.stderr + refused.stdout


def test_health_exits_1_when_the_scheduler_stopped_ticking(sqlite_url):
    db = Database(sqlite_url)
    db.ensure_schema()
    never = _tripwire("health", "--db", sqlite_url)
    assert never.returncode == 1 and "never ticked" in never.stdout
    store.beat(db, "scheduler", {"runs": 3, "errors": 0}, at=utcnow() - timedelta(minutes=5))
    stale = _tripwire("health", "--db", sqlite_url)
    assert stale.returncode == 1
    assert re.fullmatch(
        r"scheduler: last tick 30\d s ago, over 30 s \(3 runs, 0 errors\)\n", stale.stdout
    )
    lenient = _tripwire("health", "--max-age", "600", "--db", sqlite_url)
    assert lenient.returncode == 0, lenient.stdout
    store.beat(db, "scheduler", {"runs": 3, "errors": 0})
    assert _tripwire("health", "--db", sqlite_url).returncode == 0


@pytest.mark.parametrize("interval", ["0.5", "20"])
def test_health_allows_three_intervals_and_at_least_30_s(sqlite_url, tmp_path, interval):
    config = tmp_path / "tripwire.toml"
    config.write_text(f"[engine]\ninterval_s = {interval}\n")
    db = Database(sqlite_url)
    db.ensure_schema()
    store.beat(db, "scheduler", {"runs": 0, "errors": 0}, at=utcnow() - timedelta(seconds=45))
    result = _tripwire("health", "--config", str(config), "--db", sqlite_url)
    assert result.returncode == (1 if interval == "0.5" else 0), result.stdout


def test_a_slow_tick_is_stamped_when_it_ends(sqlite_url):
    # Hundreds of live runs make a tick take longer than an interval. Stamped at its start, a
    # scheduler that works (ticking back to back) looked older than three intervals to
    # `tripwire health`, and Docker marked it unhealthy.
    db = Database(sqlite_url)
    db.ensure_schema()
    readings = iter([utcnow() - timedelta(seconds=40)])  # the tick began 40 s ago

    def clock():
        return next(readings, None) or utcnow()

    AlertService(db, clock=clock, notifiers=[]).evaluate()
    seen, info = store.last_beat(db, "scheduler")
    assert abs(seen - utcnow()) < timedelta(seconds=5), seen
    assert _tripwire("health", "--db", sqlite_url).returncode == 0
