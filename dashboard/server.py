"""Serve the dashboard: ``streamlit run dashboard/app.py`` in a child process.

The database URL reaches the app through ``TRIPWIRE_DB_URL`` in the child's environment,
never on its command line (where ``ps`` would show a password).

>>> from dashboard import server
>>> proc = server.start("sqlite:///tripwire.db", port=8501)     # doctest: +SKIP
>>> server.wait_ready(8501, timeout=60, process=proc)
True
>>> proc.terminate()
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

APP = Path(__file__).resolve().parent / "app.py"
ROOT = APP.parent.parent
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8501


def command(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> list[str]:
    """The Streamlit command line: headless, bound to ``host``, no usage statistics."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        "--server.headless=true",
        f"--server.address={host}",
        f"--server.port={port}",
        "--server.fileWatcherType=none",
        "--server.runOnSave=false",
        "--browser.gatherUsageStats=false",
        "--global.developmentMode=false",
        "--client.toolbarMode=viewer",
        "--client.showErrorDetails=false",
    ]


def _config_file(config_path: str | os.PathLike | None) -> Path | None:
    try:
        from alerts.config import config_path as find_config
    except ImportError:  # without the alert extras the dashboard uses the default threshold
        return None
    return find_config(config_path)


def environment(
    db_url: str,
    env: dict[str, str] | None = None,
    config_path: str | os.PathLike | None = None,
) -> dict[str, str]:
    """The server's environment: ours, ``env``, the database, and the configuration in use
    (``config_path``, else ``$TRIPWIRE_CONFIG``, else ``./tripwire.toml``) by absolute path,
    since the server runs in the package's directory. Its ``stalled`` rule says when a silent
    run shows as stalled.

    >>> environment("sqlite:///t.db")["TRIPWIRE_DB_URL"]
    'sqlite:///t.db'
    """
    child_env = {**os.environ, **(env or {})}
    child_env["TRIPWIRE_DB_URL"] = db_url
    found = _config_file(config_path)
    if found:
        child_env["TRIPWIRE_CONFIG"] = str(found.resolve())
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), child_env.get("PYTHONPATH", "")) if p
    )
    child_env.setdefault("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")
    return child_env


def start(
    db_url: str,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    quiet: bool = True,
    env: dict[str, str] | None = None,
    config_path: str | os.PathLike | None = None,
) -> subprocess.Popen:
    """Start the dashboard server on ``host:port`` over ``db_url``; returns the child process.

    ``quiet`` drops Streamlit's own banner (errors still reach stderr); ``env`` and
    ``config_path``: see :func:`environment`. Stop it with ``terminate()``.
    """
    return subprocess.Popen(
        command(host, port),
        env=environment(db_url, env, config_path),
        cwd=str(ROOT),
        stdout=subprocess.DEVNULL if quiet else None,
        stdin=subprocess.DEVNULL,
    )


def wait_ready(
    port: int = DEFAULT_PORT,
    timeout: float = 60.0,
    *,
    host: str = DEFAULT_HOST,
    process: subprocess.Popen | None = None,
) -> bool:
    """Poll Streamlit's health endpoint until it answers ``ok``; False on timeout or early exit."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    url = f"http://{host}:{port}/_stcore/health"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.25)
    return False


def stop(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminate the server and wait for it (kill if it does not go)."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)
