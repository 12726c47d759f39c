"""Spool files left behind: a trainer that died while the database was down.

The writer appends what it could not write to ``<spool dir>/<run uid>.jsonl`` and replays it
once the database answers. A trainer that stops before that leaves the file; these functions
list such files and replay them into a database (``tripwire spool list`` / ``replay``).
A line that does not decode (torn by a kill or a full disk mid-write) is skipped; every other
line is replayed, and the skipped ones are kept in ``<run uid>.jsonl.bad`` when the file goes.

>>> for f in spooled_files(DEFAULT_SPOOL_DIR):                        # doctest: +SKIP
...     print(f.run_uid, f.records, replay(Database(url), f))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from storage import runs
from storage.db import Database
from storage.errors import RunNotFound, StorageError
from storage.writer import (
    DEFAULT_SPOOL_DIR,
    BatchWriter,
    bad_lines_path,
    read_spool,
    rejected_path,
)


@dataclass(frozen=True)
class SpoolFile:
    """One run's spooled records, summarised."""

    path: Path
    run_uid: str
    records: int
    rows: int
    has_start: bool
    first_step: int | None
    last_step: int | None
    unreadable: int = 0
    """Lines that do not decode: skipped, and kept in :attr:`bad_path` once the rest is replayed."""

    @property
    def bad_path(self) -> Path:
        return bad_lines_path(self.path)


class SpoolNotReplayable(StorageError):
    """The file's run is neither in the database nor started in the file."""


def spooled_files(directory: Path | str = DEFAULT_SPOOL_DIR) -> list[SpoolFile]:
    """Every non-empty spool file in ``directory``, oldest first."""
    return [_summary(p) for p in _oldest_first(directory, "*.jsonl") if p.stat().st_size > 0]


def rejected_files(directory: Path | str = DEFAULT_SPOOL_DIR) -> list[tuple[Path, int]]:
    """The files of records the database refused (:func:`storage.writer.rejected_path`), each
    with its number of records; replay never takes them."""
    return [(p, len(read_spool(p)[0])) for p in _oldest_first(directory, "*.jsonl.rejected")]


def _oldest_first(directory: Path | str, pattern: str) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(directory.glob(pattern), key=lambda p: p.stat().st_mtime)


def _summary(path: Path) -> SpoolFile:
    records, bad = read_spool(path)
    data = [payload for kind, payload in records if kind in ("scalars", "layer_stats")]
    steps = [row["step"] for payload in data for row in payload]
    return SpoolFile(
        path,
        path.stem,
        len(records),
        sum(len(payload) for payload in data),
        any(kind == "start" for kind, _ in records),
        min(steps, default=None),
        max(steps, default=None),
        len(bad),
    )


def replay(db: Database, spool: SpoolFile, timeout: float = 300.0) -> int:
    """Write ``spool``'s records into ``db`` in order; returns the rows written.

    The file is removed once everything is in the database (writes are idempotent, so a
    replay that is interrupted can simply run again); its lines that do not decode are then
    kept in ``spool.bad_path``. Raises :class:`SpoolNotReplayable` if the run is unknown to
    ``db`` and the file does not start it, and ``StoreUnavailable`` if the database cannot be
    reached (the file is kept), and :class:`StorageError` naming the file the database's
    refused records are kept in, once the rest is written.
    """
    try:
        run = runs.find_run(db, spool.run_uid)
        run_id = run.id
        layer_ids = {layer.name: layer.id for layer in runs.layers(db, run.id)}
    except RunNotFound:
        if spool.records and not spool.has_start:  # no records: only bad lines to set aside
            raise SpoolNotReplayable(
                f"{spool.path}: run {spool.run_uid} is not in this database and the file does "
                "not start it; replay it into the database the trainer wrote to"
            ) from None
        run_id, layer_ids = None, {}
    writer = BatchWriter(
        db, spool.run_uid, spool_dir=spool.path.parent, run_id=run_id, layer_ids=layer_ids
    )
    try:
        writer.flush(timeout)
    finally:
        writer.close(timeout)
    if writer.spooled:
        raise StorageError(f"{spool.path}: not every record could be written; it is kept")
    if writer.rejected:
        raise StorageError(
            f"{writer.rows_written} rows written, but the database refused {writer.rejected} "
            f"records: kept in {rejected_path(spool.path)}"
        )
    return writer.rows_written
