"""A throwaway PostgreSQL server of the tests' own (initdb + pg_ctl), to stop and start at will.

Used to take the database away in the middle of a run and bring it back. Runs as the
``postgres`` system user when the tests run as root (initdb refuses root).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThrowawayPostgres:
    """``start()``, ``stop()``, ``url``; ``cleanup()`` removes the data directory."""

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = _bin("initdb"), _bin("pg_ctl")
        if not self.initdb or not self.pg_ctl:
            raise RuntimeError("initdb/pg_ctl not found (install postgresql)")
        self.port = free_port()
        self.root = tempfile.mkdtemp(prefix="tripwire-pg-")
        self.data = os.path.join(self.root, "data")
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run([self.initdb, "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync"])
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, cmd: list[str]) -> None:
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            [
                self.pg_ctl,
                "-D",
                self.data,
                "-o",
                options,
                "-l",
                os.path.join(self.root, "log"),
                "-w",
                "start",
            ]
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.2)
        raise RuntimeError("throwaway PostgreSQL did not start")

    def stop(self) -> None:
        self._run([self.pg_ctl, "-D", self.data, "-m", "immediate", "-w", "stop"])

    def cleanup(self) -> None:
        try:
            self.stop()
        except Exception:
            pass
        shutil.rmtree(self.root, ignore_errors=True)
