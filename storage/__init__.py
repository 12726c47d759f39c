"""Tripwire storage: the SQL database every other part reads and writes.

SQLite by default (a file, WAL mode), PostgreSQL for teams. The schema is owned by the
Alembic migrations in ``storage/migrations``; ORM classes are private and queries return
the plain dataclasses of :mod:`storage.entities`.

>>> from storage import Database, runs
>>> db = Database("sqlite:///tripwire.db")   # doctest: +SKIP
>>> db.ensure_schema()
>>> [r.name for r in runs.list_runs(db)]
"""

from storage.db import DEFAULT_URL, Database, redact_url, resolve_url, utcnow
from storage.entities import LAYER_STATISTICS, STEP_STATISTICS, Layer, LayerStat, Run, ScalarPoint
from storage.errors import (
    AmbiguousRun,
    BadDatabaseUrl,
    RowsRejected,
    RunNotFound,
    SchemaOutOfDate,
    StorageError,
    StoreUnavailable,
)

__all__ = [
    "AmbiguousRun",
    "BadDatabaseUrl",
    "DEFAULT_URL",
    "LAYER_STATISTICS",
    "STEP_STATISTICS",
    "Database",
    "Layer",
    "LayerStat",
    "RowsRejected",
    "Run",
    "RunNotFound",
    "ScalarPoint",
    "SchemaOutOfDate",
    "StorageError",
    "StoreUnavailable",
    "redact_url",
    "resolve_url",
    "utcnow",
]
