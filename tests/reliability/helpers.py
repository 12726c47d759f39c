"""Real parts for the reliability tests: a tiny training loop, a loopback webhook, a trainer process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRIPWIRE = str(Path(sys.executable).parent / "tripwire")


def tiny_model(seed: int = 0):
    """Three linear layers; small enough that a step is well under a millisecond."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)
    )


def train(model, monitor, steps: range, *, seed: int = 0) -> list[float]:
    """A real training loop (forward, backward, ``log``, step); returns the losses logged."""
    import torch
    from torch.nn import functional as F

    gen = torch.Generator().manual_seed(seed + steps.start)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for step in steps:
        x = torch.randn(16, 8, generator=gen)
        y = torch.randn(16, 4, generator=gen)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        monitor.log(step, loss=loss, lr=0.05)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class Webhook:
    """A loopback HTTP server that records every POSTed JSON body.

    ``statuses`` scripts the answers (then 200); ``delay_s`` holds each answer that long (a
    slow or timing-out receiver); ``received`` is set on each request.
    """

    def __init__(self, statuses: list[int] | None = None, delay_s: float = 0.0):
        self.statuses = list(statuses or [])
        self.delay_s = delay_s
        self.bodies: list[dict] = []
        self.attempts = 0
        self.received = threading.Event()
        self._lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with hook._lock:
                    hook.attempts += 1
                    status = hook.statuses.pop(0) if hook.statuses else 200
                    if status == 200:
                        hook.bodies.append(json.loads(body))
                hook.received.set()
                if hook.delay_s:
                    time.sleep(hook.delay_s)
                try:
                    self.send_response(status)
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the sender gave up (timeout) or was killed

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook/SECRET-TOKEN"

    def keys(self) -> list[tuple]:
        """(run, predictor, event, layers) of every accepted delivery."""
        return [(b["run"], b["predictor"], b["event"], tuple(b["layers"])) for b in self.bodies]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


TRAINER = """
import json, sys, time, torch
sys.path.insert(0, {root!r})
import collector
from tests.reliability.helpers import tiny_model, train
torch.set_num_threads(1)
model = tiny_model()
monitor = collector.watch(model, run={run!r}, db={db!r}, every=2, sample_size=32,
                          spool_dir={spool!r})
monitor._writer.heartbeat_interval = 0.2
train(model, monitor, range(0, {steps}))
monitor.flush()
print("ready", flush=True)
time.sleep({pause_s})  # hung: the writer thread keeps reporting, no step is logged
step = {steps}
while {forever}:  # keeps training until killed
    train(model, monitor, range(step, step + 1))
    step += 1
    time.sleep(0.01)
monitor.close()
print(json.dumps({{"errors": monitor.errors, "write_failures": monitor._writer.write_failures}}))
"""


def start_trainer(
    db_url: str,
    run: str,
    spool_dir: Path,
    steps: int = 20,
    *,
    forever: bool = True,
    pause_s: float = 0.0,
    prefix: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """A separate Python process training with the collector (``forever``: until killed),
    pausing ``pause_s`` seconds after its first ``steps`` steps, alive but logging nothing;
    ``prefix`` runs it under another program (``faketime``, which forks: kill the process
    group, ``os.killpg(trainer.pid, signal.SIGKILL)``), with ``env`` added."""
    code = TRAINER.format(
        root=str(ROOT),
        run=run,
        db=db_url,
        spool=str(spool_dir),
        steps=steps,
        forever=forever,
        pause_s=pause_s,
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TRIPWIRE_")}
    return subprocess.Popen(
        [*(prefix or []), sys.executable, "-c", code],
        cwd=ROOT,
        start_new_session=bool(prefix),
        env={**clean, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def outward_address() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
            address = s.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address
