"""The batched writer: records go into a queue, a background thread writes them in batches.

If the database cannot be reached, records are appended to a local spool file (JSON lines)
and replayed, in order, once it answers again. Every write is idempotent (keys per
run/key/step and run/layer/step), so a replay never writes a row twice.

Records are ``(kind, payload)`` pairs:

- ``("start", {"run": {uid, project, name, started_at, config, ...}, "layers": [...]})``
- ``("layers", [{"name", "position", "kind", "shape"}, ...])``
- ``("scalars", [{"step", "key", "value", "wall_time"}, ...])``
- ``("layer_stats", [{"layer", "step", "wall_time", <statistics>, "sa_hist"}, ...])``
- ``("finish", {"status", "at", "error"})``

A payload may also be a function that returns it: the writer thread calls it when it takes the
record (the collector's rows, read back from the device there so that the training thread does
not wait). One that raises is logged and its record dropped.

Times inside records are Unix seconds (floats) so the spool stays plain JSON.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from storage import rollup, runs, stats
from storage.db import Database
from storage.errors import StoreUnavailable

log = logging.getLogger("tripwire.writer")

DEFAULT_SPOOL_DIR = Path(
    os.environ.get("TRIPWIRE_SPOOL_DIR", Path.home() / ".cache" / "tripwire" / "spool")
)

_STOP = object()
_FLUSH = "flush"
MAX_BATCH_RECORDS = 10_000
"""Records the writer commits in one transaction at most: more wait for the next one."""


def _to_datetime(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc).replace(tzinfo=None)


class BatchWriter:
    """Writes one run's records from a background thread; spools them while the database is down.

    >>> writer = BatchWriter(Database("sqlite:///tripwire.db"), run_uid="3f2a...")  # doctest: +SKIP
    >>> writer.put("scalars", [{"step": 0, "key": "loss", "value": 2.3, "wall_time": time.time()}])
    >>> writer.close()      # flushes everything (or leaves it in the spool file if the DB is down)
    """

    def __init__(
        self,
        db: Database,
        run_uid: str,
        *,
        spool_dir: Path | str | None = None,
        flush_interval: float = 1.0,
        heartbeat_interval: float = 15.0,
        retry_max_interval: float = 30.0,
        on_written: Callable[[int], None] | None = None,
        run_id: int | None = None,
        layer_ids: dict[str, int] | None = None,
    ):
        """``run_id`` and ``layer_ids`` continue a run already in the database without a
        ``start`` record (replaying a spool file whose start was written before it)."""
        self.db = db
        self.run_uid = run_uid
        self.spool_path = Path(spool_dir or DEFAULT_SPOOL_DIR) / f"{run_uid}.jsonl"
        self.flush_interval = flush_interval
        self.heartbeat_interval = heartbeat_interval
        self.retry_max_interval = retry_max_interval
        self.on_written = on_written
        self.run_id: int | None = run_id
        self.rows_written = 0
        self.write_failures = 0
        self.dropped = 0  # records whose payload function raised
        self._layer_ids: dict[str, int] = dict(layer_ids or {})
        self._bucket_width: int | None = None  # the run's rollup bucket width, read once
        self._queue: queue.Queue = queue.Queue()
        self._flushed = threading.Condition()
        self._put_count = 0
        self._done_count = 0
        self._last_step: int | None = None
        self._last_beat = 0.0
        self._retry_at = 0.0
        self._retry_delay = 0.5
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="tripwire-writer", daemon=True)
        self._thread.start()

    # -- producer side (training thread) ------------------------------------------------------

    def put(self, kind: str, payload) -> None:
        """Enqueue a record (or a function returning its payload, called on the writer thread);
        returns at once."""
        with self._flushed:
            self._put_count += 1
        self._queue.put((kind, payload))

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until every record put so far is written or spooled. True if it finished in time."""
        with self._flushed:
            target = self._put_count
        self._queue.put((_FLUSH, None))
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._flushed:
            while self._done_count < target:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._flushed.wait(remaining)
        return True

    def close(self, timeout: float | None = 30.0) -> None:
        """Flush, try the database one last time, and stop the thread. Spooled rows stay on disk."""
        if self._closed:
            return
        self._closed = True
        self._retry_at = 0.0  # one last attempt, whatever the backoff says
        self._queue.put((_STOP, None))
        self._thread.join(timeout)

    @property
    def spooled(self) -> bool:
        """True while records wait in the spool file for the database."""
        return self.spool_path.exists() and self.spool_path.stat().st_size > 0

    # -- consumer side (writer thread) --------------------------------------------------------

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            batch, stopping = self._drain()
            self._write(batch, force=stopping)
            with self._flushed:
                self._done_count += len(batch)
                self._flushed.notify_all()

    def _drain(self) -> tuple[list, bool]:
        """Collect records for up to ``flush_interval`` seconds (or until a flush/stop)."""
        batch: list = []
        deadline = time.monotonic() + self.flush_interval
        while True:
            timeout = max(0.0, deadline - time.monotonic())
            try:
                kind, payload = self._queue.get(timeout=timeout)
            except queue.Empty:
                return batch, False
            if kind is _STOP:
                return batch, True
            if kind == _FLUSH:
                return batch, False
            batch.append((kind, self._resolved(kind, payload)))
            if len(batch) >= MAX_BATCH_RECORDS:
                return batch, False

    def _resolved(self, kind: str, payload):
        if not callable(payload):
            return payload
        try:
            return payload()
        except Exception:
            self.dropped += 1
            if self.dropped == 1:
                log.exception("tripwire: a %s record could not be read back; dropped", kind)
            return []

    def _write(self, batch: list, *, force: bool) -> None:
        now = time.monotonic()
        beat_due = now - self._last_beat >= self.heartbeat_interval
        if not batch and not beat_due and not self.spooled:
            return
        if self.spooled and now < self._retry_at and not force:
            self._spool(batch)
            return
        try:
            replayed = self._read_spool()
            self._commit(replayed + batch)
        except StoreUnavailable as exc:
            self.write_failures += 1
            if self.write_failures == 1 or self.write_failures % 100 == 0:
                log.warning(
                    "tripwire: database unavailable, spooling to %s (%s)", self.spool_path, exc
                )
            self._spool(batch)
            self._retry_at = time.monotonic() + self._retry_delay
            self._retry_delay = min(self._retry_delay * 2, self.retry_max_interval)
            return
        if replayed:
            log.info("tripwire: replayed %d spooled records into the database", len(replayed))
            self.spool_path.unlink(missing_ok=True)
        self._retry_delay = 0.5
        self._last_beat = now

    def _commit(self, records: list) -> None:
        """Write records in order in one transaction; caches change only once it committed."""
        run_id, layer_ids, written = self.run_id, dict(self._layer_ids), 0
        width = self._bucket_width
        with self.db.session() as session:
            # Consecutive data records go to the database as one bulk insert per table: the
            # statement overhead is paid per batch, not per check.
            scalars: list[dict] = []
            layer_rows: list[dict] = []

            def write_data() -> None:
                nonlocal width
                if scalars:
                    stats.write_scalars(session, run_id, scalars)
                if layer_rows:
                    width = width or rollup.run_width(session, run_id)
                    stats.write_layer_stats(session, run_id, layer_ids, layer_rows, width)
                scalars.clear()
                layer_rows.clear()

            for kind, payload in records:
                if kind == "scalars" and payload:  # replayed records count for last_step too
                    self._last_step = max([self._last_step or 0] + [r["step"] for r in payload])
                if kind == "scalars" and run_id is not None:
                    scalars += payload
                    written += len(payload)
                    continue
                if kind == "layer_stats" and run_id is not None:
                    layer_rows += payload
                    written += len(payload)
                    continue
                write_data()
                if kind == "start":
                    spec = dict(
                        payload["run"], started_at=_to_datetime(payload["run"]["started_at"])
                    )
                    run_id = runs.ensure_run(session, **spec)
                    width = None  # a resumed run keeps the width it was created with
                    layer_ids = runs.ensure_layers(session, run_id, payload.get("layers", []))
                elif run_id is None:
                    continue  # cannot happen: the start record always comes first
                elif kind == "layers":
                    layer_ids = runs.ensure_layers(session, run_id, payload)
                elif kind == "finish":
                    at = _to_datetime(payload["at"])
                    runs.finish(
                        session, run_id, status=payload["status"], at=at, error=payload.get("error")
                    )
            write_data()
            if run_id is not None:
                runs.touch(session, run_id, last_step=self._last_step, at=_to_datetime(time.time()))
        self.run_id, self._layer_ids, self._bucket_width = run_id, layer_ids, width
        self.rows_written += written
        if run_id is not None and self.on_written is not None:
            self.on_written(run_id)

    # -- the spool file -------------------------------------------------------------------------

    def _spool(self, records: list) -> None:
        if not records:
            return
        self.spool_path.parent.mkdir(parents=True, exist_ok=True)
        with self.spool_path.open("a", encoding="utf-8") as f:
            for kind, payload in records:
                f.write(
                    json.dumps([kind, payload]) + "\n"
                )  # NaN/Infinity allowed: json round-trips them
            f.flush()
            os.fsync(f.fileno())

    def _read_spool(self) -> list:
        return read_spool(self.spool_path) if self.spooled else []


def read_spool(path: Path) -> list[tuple[str, object]]:
    """The ``(kind, payload)`` records of a spool file, in the order they were spooled."""
    with path.open(encoding="utf-8") as f:
        return [tuple(json.loads(line)) for line in f if line.strip()]
