"""The Monitor: what ``collector.watch`` returns and the training loop calls every step."""

from __future__ import annotations

import atexit
import logging
import math
import os
import socket
import sys
import threading
import time
import traceback
import uuid
from numbers import Number

import torch
from torch import nn

from collector.capture import InputSampler
from collector.checks import SpectralState, run_check
from collector.layers import select_layers
from collector.spectral import SA_BINS
from storage import Database, SchemaOutOfDate, StoreUnavailable
from storage.writer import BatchWriter

log = logging.getLogger("tripwire.collector")


class LossExplosionPredicted(RuntimeError):
    """Raised by ``Monitor.log`` (with ``halt_on_alert=True``) once a critical alert fires for the run.

    Catch it to checkpoint and stop::

        try:
            monitor.log(step, loss=loss)
        except collector.LossExplosionPredicted as alarm:
            save_checkpoint(); raise
    """

    def __init__(self, alerts: list):
        self.alerts = alerts
        names = ", ".join(
            sorted({f"{a.predictor}" + (f" on {a.layer}" if a.layer else "") for a in alerts})
        )
        super().__init__(f"Tripwire predicts a loss explosion: {names}")


class Monitor:
    """Observes one training run. Create it with :func:`collector.watch`.

    ``log()`` is cheap on ordinary steps (a few microseconds: the values are kept, not copied
    to the host); every ``every`` steps it runs a check of the monitored layers. Nothing in
    here raises into the training loop: an internal failure is logged once and counted in
    ``errors``.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        run: str | None,
        project: str,
        db: str | None,
        every: int,
        config: dict | None,
        layers: list[str] | str | None,
        exclude: list[str] | str | None,
        sample_size: int,
        tags: list[str] | None,
        run_id: str | None,
        halt_on_alert: bool,
        spool_dir: str | None,
        seed: int,
    ):
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        if sample_size < 1:
            raise ValueError(f"sample_size must be at least 1, got {sample_size}")
        self.model = model
        self.every = every
        self.halt_on_alert = halt_on_alert
        self.uid = run_id or uuid.uuid4().hex
        self.name = run or f"run-{self.uid[:8]}"
        self.project = project
        self.errors = 0
        self.checks = 0
        self.layers = select_layers(model, include=layers, exclude=exclude)
        if not self.layers:
            log.warning(
                "tripwire: no linear layers matched in %s; only scalars will be recorded",
                type(model).__name__,
            )
        self._sampler = InputSampler(self.layers, sample_size=sample_size, seed=seed)
        self._spectral = SpectralState()
        self._pending: list[tuple[int, float, dict]] = []
        self._last_step: int | None = None
        self._closed = False
        self._error_logged = False
        self._alarm: list | None = None
        self._alarm_lock = threading.Lock()

        self.db = Database(db)
        try:
            self.db.ensure_schema()  # refuses an out-of-date schema, with the command that fixes it
        except SchemaOutOfDate:
            raise
        except StoreUnavailable as exc:
            log.warning(
                "tripwire: database unavailable at start (%s); spooling until it returns", exc
            )
        self._writer = BatchWriter(
            self.db,
            self.uid,
            spool_dir=spool_dir,
            on_written=self._poll_alerts if halt_on_alert else None,
        )
        self._writer.put(
            "start",
            {
                "run": {
                    "uid": self.uid,
                    "project": project,
                    "name": self.name,
                    "started_at": time.time(),
                    "config": _jsonable(config or {}),
                    "tags": list(tags or []),
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "every": every,
                    "sa_bin_edges": SA_BINS.tolist(),
                },
                "layers": [layer.spec() for layer in self.layers],
            },
        )
        self._sampler.arm()  # the first step may be a check step
        _live_monitors.add(self)

    # -- the training-loop API ------------------------------------------------------------------

    def log(self, step: int, loss=None, lr=None, **scalars) -> None:
        """Record step ``step``: call after ``loss.backward()`` and before ``optimizer.step()``.

        ``loss``, ``lr`` and any keyword scalars may be Python numbers or 0-dim tensors (kept
        on the device until the next check, then copied in one batch). On check steps the
        monitored layers' statistics are computed from the weights, their gradients and the
        inputs sampled during this step's forward pass.

        >>> monitor.log(step, loss=loss, lr=scheduler.get_last_lr()[0], tokens_per_s=tps)  # doctest: +SKIP
        """
        if self._alarm:
            alerts, self._alarm = self._alarm, None
            raise LossExplosionPredicted(alerts)
        if self._closed:
            return
        try:
            values = {"loss": loss, "lr": lr, **scalars}
            values = {
                k: (v.detach() if isinstance(v, torch.Tensor) else v)
                for k, v in values.items()
                if v is not None
            }
            self._pending.append((int(step), time.time(), values))
            self._last_step = int(step)
            if step % self.every == 0:
                self._check(int(step))
            elif self._sampler.armed:
                self._sampler.discard()  # armed for a step that turned out not to be a check
            if (step + 1) % self.every == 0:
                self._sampler.arm()  # the next forward pass belongs to a check step
        except Exception:
            self._failed()

    def close(
        self, status: str = "finished", error: str | None = None, timeout: float = 30.0
    ) -> None:
        """Flush everything and mark the run ``finished`` (or ``failed``). Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        _live_monitors.discard(self)
        try:
            self._sampler.disarm()
            self._flush_scalars()
            self._writer.put("finish", {"status": status, "at": time.time(), "error": error})
            self._writer.flush(timeout)
            self._writer.close(timeout)
            if self._writer.spooled:
                log.warning(
                    "tripwire: the database was unreachable; %s keeps the rows, replayed when this run "
                    "resumes (collector.watch(..., run_id=%r))",
                    self._writer.spool_path,
                    self.uid,
                )
        except Exception:
            self._failed()

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None or issubclass(exc_type, (KeyboardInterrupt, LossExplosionPredicted)):
            status = "finished" if exc_type is None else "failed"
        else:
            status = "failed"
        error = (
            None if exc is None else "".join(traceback.format_exception_only(exc_type, exc)).strip()
        )
        self.close(status=status, error=error)

    def flush(self, timeout: float = 30.0) -> bool:
        """Write everything logged so far (useful before reading the database in the same process)."""
        self._flush_scalars()
        return self._writer.flush(timeout)

    @property
    def run_db_id(self) -> int | None:
        """The run's id in the database, once its first write went through."""
        return self._writer.run_id

    # -- internals --------------------------------------------------------------------------------

    def _check(self, step: int) -> None:
        rows = self._sampler.take()
        layer_rows, totals = run_check(self.layers, rows, self._spectral)
        wall = time.time()
        if layer_rows:
            for row in layer_rows:
                row["step"] = step
                row["wall_time"] = wall
            self._writer.put("layer_stats", layer_rows)
            step_values = (
                self._pending[-1][2] if self._pending and self._pending[-1][0] == step else None
            )
            if step_values is not None:
                for key, value in totals.items():
                    if value is not None:
                        step_values.setdefault(key, value)
        self.checks += 1
        self._flush_scalars()

    def _flush_scalars(self) -> None:
        """Turn the pending per-step values into rows with one host transfer."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        tensors = [
            v for _, _, values in pending for v in values.values() if isinstance(v, torch.Tensor)
        ]
        host = iter(_to_host(tensors))
        rows = []
        for step, wall, values in pending:
            for key, value in values.items():
                if isinstance(value, torch.Tensor):
                    value = next(host)
                rows.append(
                    {"step": step, "key": key, "value": _as_float(value), "wall_time": wall}
                )
        self._writer.put("scalars", rows)

    def _poll_alerts(self, run_db_id: int) -> None:
        """Runs in the writer thread after each write: has a critical alert fired for this run?"""
        from storage import alerts as alert_store  # the alert tables' queries

        firing = alert_store.firing_alerts(self.db, run_db_id, severity="critical")
        if firing:
            with self._alarm_lock:
                self._alarm = firing

    def _failed(self) -> None:
        self.errors += 1
        if not self._error_logged:
            self._error_logged = True
            log.exception(
                "tripwire: collector error (training continues; further errors counted in monitor.errors)"
            )


def _to_host(tensors: list[torch.Tensor]) -> list[float]:
    if not tensors:
        return []
    by_device: dict[torch.device, list[int]] = {}
    for i, t in enumerate(tensors):
        by_device.setdefault(t.device, []).append(i)
    out: list[float] = [math.nan] * len(tensors)
    for device, idx in by_device.items():
        # sync point: one copy per device for all values since the last check.
        values = torch.stack([tensors[i].float().reshape(-1)[0] for i in idx]).cpu().tolist()
        for i, v in zip(idx, values, strict=True):
            out[i] = v
        del device
    return out


def _as_float(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, Number):
        try:
            return float(value)
        except (TypeError, ValueError):
            return None
    return float(value)


def _jsonable(value):
    """Configs often hold tensors, paths or dataclasses: keep what JSON can say, stringify the rest."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


_live_monitors: set[Monitor] = set()


def _close_on_exit() -> None:
    """A script that forgets ``close()`` still flushes; an uncaught exception marks the run failed."""
    failed = getattr(sys, "last_value", None) is not None
    for monitor in list(_live_monitors):
        monitor.close(
            status="failed" if failed else "finished",
            error=repr(sys.last_value) if failed else None,
        )


atexit.register(_close_on_exit)
