"""The batched writer: records go into a queue, a background thread writes them in batches.

If the database cannot be reached, records are appended to a local spool file (JSON lines)
and replayed, in order, once it answers again. Every write is idempotent (keys per
run/key/step and run/layer/step), so a replay never writes a row twice.

Records are ``(kind, payload)`` pairs:

- ``("start", {"run": {uid, project, name, started_at, config, ...}, "layers": [...]})``
- ``("layers", [{"name", "position", "kind", "shape"}, ...])``
- ``("scalars", [{"step", "key", "value", "wall_time"}, ...])``
- ``("layer_stats", [{"layer", "step", "wall_time", <statistics>, "sa_hist"}, ...])``
- ``("rewind", {"from_step"})``: a resumed run went back to a checkpoint; what the run stored
  at ``from_step`` and after is removed (:func:`storage.runs.rewind`) before its new rows
- ``("finish", {"status", "at", "error"})``

A payload may also be a function that returns it: the writer thread calls it when it takes the
record (the collector's rows, read back from the device there so that the training thread does
not wait). One that raises is logged and its record dropped.

The thread never dies: a write that fails for another reason than an unreachable database is
logged (the first time), counted in ``errors`` (and ``on_error``), and its records are spooled
and retried like those of an outage. Where the database refused the rows themselves
(:class:`RowsRejected`: a value it cannot store, a run deleted meanwhile), the records are
written one by one instead; those it refuses are kept in ``<run uid>.jsonl.rejected`` beside
the spool, and the rest goes on. A spool line that does not decode (the torn last line of a
write cut short by a kill or a full disk) is skipped with a warning; once the rest is replayed,
such lines are kept in ``<run uid>.jsonl.bad`` beside the spool.

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
from storage.errors import RowsRejected, SchemaOutOfDate, StoreUnavailable

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
        on_error: Callable[[], None] | None = None,
        run_id: int | None = None,
        layer_ids: dict[str, int] | None = None,
        schema_checked: bool = True,
    ):
        """``run_id`` and ``layer_ids`` continue a run already in the database without a
        ``start`` record (replaying a spool file whose start was written before it).
        ``on_error`` is called on the writer thread after each failure counted in ``errors``.
        ``schema_checked=False`` (the database was down when the trainer started): its schema is
        checked before the first write, and rows are spooled while it is not this version's."""
        if "/" in run_uid or os.sep in run_uid or "\x00" in run_uid:
            # It names the spool file: "../x" or "/abs/x" would write outside the spool folder.
            raise ValueError(f"run id {run_uid!r}: may not hold a / (it names the spool file)")
        self.db = db
        self.run_uid = run_uid
        self.spool_path = Path(spool_dir or DEFAULT_SPOOL_DIR) / f"{run_uid}.jsonl"
        self.flush_interval = flush_interval
        self.heartbeat_interval = heartbeat_interval
        self.retry_max_interval = retry_max_interval
        self.on_written = on_written
        self.on_error = on_error
        self.run_id: int | None = run_id
        self._schema_checked = schema_checked
        self.rows_written = 0
        self.write_failures = 0  # writes that found the database unreachable
        self.unreachable = False  # the last write found the database unreachable
        self.errors = 0  # any other failure: a write that raised, a record not read back
        self.dropped = 0  # records whose payload function raised
        self.rejected = 0  # records the database refused, kept in rejected_path()
        self._logged: set[str] = set()  # the failures logged once already
        self._bad_lines_warned = 0
        self._layer_ids: dict[str, int] = dict(layer_ids or {})
        self._bucket_width: int | None = None  # the run's rollup bucket width, read once
        self._queue: queue.Queue = queue.Queue()
        self._flushed = threading.Condition()
        self._put_count = 0
        self._done_count = 0
        self._last_step: int | None = None
        self.logged_at: float | None = None
        """When the producer last logged a step (Unix seconds, its clock), set by it: the run's
        ``logged_at`` follows it at every write and heartbeat, while the step's rows may still
        wait in the producer (the collector sends scalars at its checks)."""
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
            try:
                self._write(batch, force=stopping)
            except Exception:  # a thread that died would leave flush() and close() waiting
                self._failed("the writer failed on a batch of %d records", len(batch))
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
            self._failed("a %s record could not be read back; dropped", kind)
            return []

    def _failed(self, message: str, *args) -> None:
        """Count an unexpected failure; log it (with its traceback) the first time it happens."""
        self.errors += 1
        if message not in self._logged:
            self._logged.add(message)
            log.exception("tripwire: " + message + " (further failures are counted)", *args)
        if self.on_error is not None:
            self.on_error()

    def _write(self, batch: list, *, force: bool) -> None:
        now = time.monotonic()
        beat_due = now - self._last_beat >= self.heartbeat_interval
        if not batch and not beat_due and not self.spooled:
            return
        if self.spooled and now < self._retry_at and not force:
            self._spool(batch)
            return
        try:
            self._check_schema()
            replayed, bad = self._read_spool()
            try:
                self._commit(replayed + batch)
            except RowsRejected:
                rest = self._commit_apart(replayed + batch)
                if rest:  # the database went away midway: the spool keeps only what is left
                    self._replace_spool(rest, bad)
                    batch = []  # in the spool already
                    raise StoreUnavailable("the database went away while writing apart") from None
        except StoreUnavailable as exc:
            self.write_failures += 1
            self.unreachable = True
            if self.write_failures == 1 or self.write_failures % 100 == 0:
                log.warning(
                    "tripwire: database unavailable, spooling to %s (%s)", self.spool_path, exc
                )
            self._retry_later(batch)
            return
        except Exception:
            self.unreachable = False
            self._failed(
                "writing %d records failed; spooled to %s and retried", len(batch), self.spool_path
            )
            self._retry_later(batch)
            return
        self.unreachable = False
        if replayed or bad:
            if bad:
                _append_lines(bad_lines_path(self.spool_path), bad)
            log.info("tripwire: replayed %d spooled records into the database", len(replayed))
            self.spool_path.unlink(missing_ok=True)
            self._bad_lines_warned = 0
        self._retry_delay = 0.5
        self._last_beat = now
        if self.run_id is not None and self.on_written is not None:
            try:
                self.on_written(self.run_id)
            except StoreUnavailable:
                pass  # the rows are written; it is called again after the next write
            except Exception:
                self._failed("the on_written callback failed")

    def _check_schema(self) -> None:
        """Before the first write of a trainer that started while the database was down: a
        schema of another version (a newer Tripwire's, one not upgraded yet) is not written
        into; the rows wait in the spool as during an outage, with the fix in the warning."""
        if self._schema_checked:
            return
        try:
            self.db.ensure_schema()
        except SchemaOutOfDate as exc:
            raise StoreUnavailable(str(exc)) from exc
        self._schema_checked = True

    def _retry_later(self, batch: list) -> None:
        """Spool ``batch`` and back off before the next attempt."""
        self._spool(batch)
        self._retry_at = time.monotonic() + self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, self.retry_max_interval)

    def _commit_apart(self, records: list) -> list:
        """Write records one transaction each, after the database refused them together: those
        it refuses alone (and every record of a run whose start it refused) are set aside in
        :func:`rejected_path`. Returns the records not handled when it went away meanwhile."""
        for i, (kind, payload) in enumerate(records):
            try:
                self._commit([(kind, payload)])
            except RowsRejected as exc:
                self._reject(kind, payload, exc)
            except StoreUnavailable:
                return records[i:]
        return []

    def _reject(self, kind: str, payload, reason: Exception) -> None:
        self.rejected += 1
        self._spool([(kind, payload)], rejected_path(self.spool_path))
        self._failed(
            "the database refused a %s record (%s); kept in %s, the rest goes on",
            kind,
            reason,
            rejected_path(self.spool_path),
        )

    def _replace_spool(self, records: list, bad: list[str]) -> None:
        """The spool file, holding only ``records`` now (its undecodable lines set aside)."""
        if bad:
            _append_lines(bad_lines_path(self.spool_path), bad)
        fresh = self.spool_path.with_name(self.spool_path.name + ".new")
        fresh.unlink(missing_ok=True)
        self._spool(records, fresh)
        os.replace(fresh, self.spool_path)  # a kill leaves the old file or the new one whole

    def _commit(self, records: list) -> None:
        """Write records in order in one transaction; caches change only once it committed."""
        run_id, layer_ids, written = self.run_id, dict(self._layer_ids), 0
        width = self._bucket_width
        # The trainer's times, put on the database server's clock (where the scheduler judges
        # them): a trainer whose clock is behind would otherwise look stalled while it trains.
        shift = self.db.clock_offset()

        def server_time(seconds: float) -> datetime:
            return _to_datetime(seconds) + shift

        rewound: list[tuple[int, int, int]] = []  # (from step, steps removed, last removed)
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

            logged = None  # the newest wall time of the steps written now
            for kind, payload in records:
                if kind == "start":  # a resume: the earlier attempt's times (replayed) do not count
                    logged = None
                if kind == "scalars" and payload:  # replayed records count for last_step too
                    self._last_step = max([self._last_step or 0] + [r["step"] for r in payload])
                    logged = max([logged or 0.0] + [r.get("wall_time") or 0.0 for r in payload])
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
                        payload["run"], started_at=server_time(payload["run"]["started_at"])
                    )
                    run_id = runs.ensure_run(session, **spec)
                    width = None  # a resumed run keeps the width it was created with
                    layer_ids = runs.ensure_layers(session, run_id, payload.get("layers", []))
                elif run_id is None:  # its start was refused (RowsRejected): so is this
                    raise RowsRejected(f"a {kind} record of run {self.run_uid}, never started")
                elif kind == "layers":
                    layer_ids = runs.ensure_layers(session, run_id, payload)
                elif kind == "rewind":
                    start = int(payload["from_step"])
                    removed, last = runs.rewind(session, run_id, start)
                    if removed:
                        rewound.append((start, removed, last))
                    if self._last_step is not None and self._last_step >= start:
                        self._last_step = start - 1 if start > 0 else None
                elif kind == "finish":
                    at = server_time(payload["at"])
                    runs.finish(
                        session, run_id, status=payload["status"], at=at, error=payload.get("error")
                    )
            write_data()
            if run_id is not None:
                newest = max(logged or 0.0, self.logged_at or 0.0)
                runs.touch(
                    session,
                    run_id,
                    last_step=self._last_step,
                    at=server_time(time.time()),
                    logged_at=server_time(newest) if newest else None,
                )
        self.run_id, self._layer_ids, self._bucket_width = run_id, layer_ids, width
        self.rows_written += written
        for start, removed, last in rewound:
            log.warning(
                "tripwire: run %s resumed at step %d: the %d steps the earlier attempt stored "
                "from there (up to step %d) are replaced by this attempt's",
                self.run_uid,
                start,
                removed,
                last,
            )

    # -- the spool file -------------------------------------------------------------------------

    def _spool(self, records: list, path: Path | None = None) -> None:
        if not records:
            return
        path = path or self.spool_path
        # NaN/Infinity allowed: json round-trips them
        text = "".join(json.dumps([kind, payload]) + "\n" for kind, payload in records)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a+b") as f:
                end = f.seek(0, os.SEEK_END)
                if end:
                    f.seek(end - 1)
                    if f.read(1) != b"\n":
                        text = "\n" + text  # a torn last line: end it, or it swallows ours
                f.write(text.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
        except (OSError, TypeError, ValueError):  # a full disk; a payload json cannot write
            self._failed("%d records could not be spooled to %s; lost", len(records), path)

    def _read_spool(self) -> tuple[list, list[str]]:
        if not self.spooled:
            return [], []
        records, bad = read_spool(self.spool_path)
        if len(bad) > self._bad_lines_warned:
            self._bad_lines_warned = len(bad)
            log.warning(
                "tripwire: %s: skipping %d lines that do not decode (a write cut short); the "
                "rest is replayed, and those lines are then kept in %s",
                self.spool_path,
                len(bad),
                bad_lines_path(self.spool_path),
            )
        return records, bad


def read_spool(path: Path) -> tuple[list[tuple[str, object]], list[str]]:
    """The ``(kind, payload)`` records of a spool file, in the order they were spooled, and the
    lines that do not decode (skipped: a write cut short by a kill or a full disk tears the last
    line; every line before and after it is kept).

    >>> records, bad = read_spool(Path("spool/3f2a.jsonl"))  # doctest: +SKIP
    >>> records[0][0], bad
    ('start', ['{"broken json'])
    """
    records, bad = [], []
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, list) and len(record) == 2 and isinstance(record[0], str):
                records.append(tuple(record))
            else:
                bad.append(line.rstrip("\n"))
    return records, bad


def bad_lines_path(spool_path: Path) -> Path:
    """Where a spool file's lines that do not decode are kept once the rest is replayed.

    >>> bad_lines_path(Path("spool/3f2a.jsonl"))
    PosixPath('spool/3f2a.jsonl.bad')
    """
    return spool_path.with_name(spool_path.name + ".bad")


def rejected_path(spool_path: Path) -> Path:
    """Where the records the database refused are kept (spool lines: JSON, one per line).

    >>> rejected_path(Path("spool/3f2a.jsonl"))
    PosixPath('spool/3f2a.jsonl.rejected')
    """
    return spool_path.with_name(spool_path.name + ".rejected")


def _append_lines(path: Path, lines: list[str]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
        f.flush()
        os.fsync(f.fileno())
