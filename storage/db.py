"""Connections: the database URL, the engine, one session scope, and the schema check."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DataError,
    DBAPIError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
)
from sqlalchemy.orm import Session, sessionmaker

from storage import migrate
from storage.errors import BadDatabaseUrl, RowsRejected, SchemaOutOfDate, StoreUnavailable

DEFAULT_URL = "sqlite:///tripwire.db"
"""The embedded default: a SQLite file in the working directory."""

ENV_URL = "TRIPWIRE_DB_URL"

SQLITE_BUSY_TIMEOUT_MS = 30_000


def resolve_url(url: str | None = None) -> str:
    """The database URL: the argument, else ``$TRIPWIRE_DB_URL``, else ``sqlite:///tripwire.db``.

    A bare ``postgresql://`` URL is taken to mean psycopg 3 (``postgresql+psycopg://``).

    >>> resolve_url("sqlite:///runs.db")
    'sqlite:///runs.db'
    """
    url = url or os.environ.get(ENV_URL) or DEFAULT_URL
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def redact_url(url: str) -> str:
    """The URL with its password hidden, safe to print or log."""
    try:
        parsed = make_url(url)
    except Exception:
        return _masked(url)
    if "@" in (parsed.host or ""):  # a raw @ in the password: it would show a part of it
        return _masked(url)
    return parsed.render_as_string(hide_password=True)


def db_argument(url: str) -> str:
    """``--db`` for a command line a user can run as printed: the URL itself, or, when it holds
    a password (which is never printed), a placeholder that says so.

    >>> db_argument("sqlite:///runs.db")
    "--db 'sqlite:///runs.db'"
    >>> db_argument("postgresql+psycopg://tripwire:S3cret@db:5432/tripwire")
    '--db URL (postgresql+psycopg://tripwire:***@db:5432/tripwire, with its password)'
    """
    try:
        secret = make_url(url).password is not None
    except Exception:
        secret = True
    if secret:
        return f"--db URL ({redact_url(url)}, with its password)"
    return f"--db '{url}'"


def _masked(url: str) -> str:
    """A URL that does not parse, with everything before its last ``@`` (credentials) hidden.

    >>> _masked("postgresql+psycopg//tripwire:S3cret@db-host:5432/tripwire")
    '***@db-host:5432/tripwire'
    >>> _masked("postgresql://tripwire:p@ss:w#rd@127.0.0.1:5432/db")
    'postgresql://***@127.0.0.1:5432/db'
    """
    if "@" not in url:
        return repr(url)
    scheme, sep, _ = url.partition("://")
    return (scheme + sep if sep else "") + "***@" + url.rsplit("@", 1)[1]


CLOCK_CHECK_S = 60.0
"""How often :meth:`Database.clock_offset` measures the server's clock again: a VM's clock falls
behind while its host sleeps (the monotonic clock stops too), so only asking tells; one query a
minute, well inside the 300 s after which a silent run counts as stalled."""


def utcnow() -> datetime:
    """Naive UTC now: the one time convention of the database."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    if not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def _set_wal(cursor: sqlite3.Cursor) -> None:
    """Put the file in WAL mode (it stays so). Processes opening a new file at once all switch
    it, and SQLite answers "database is locked" to the losers at once, without waiting out the
    busy timeout: wait here instead."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # noqa: ANN001
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        _set_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


class Database:
    """A Tripwire database: an engine plus one session scope that commits or rolls back.

    Driver errors leave this class as :class:`StoreUnavailable`.

    >>> db = Database("sqlite:///tripwire.db")      # doctest: +SKIP
    >>> db.ensure_schema()                          # creates a new SQLite file's schema only
    >>> with db.session() as s:
    ...     ...
    """

    def __init__(self, url: str | None = None, *, pool_pre_ping: bool = True, create: bool = True):
        """``create=False`` refuses a SQLite file that does not exist yet (for commands that
        only read: a typo in the path is an error, not a new empty database)."""
        self.url = resolve_url(url)
        try:
            parsed = make_url(self.url)
        except (ArgumentError, ValueError):  # ValueError: a port that is not a number
            raise BadDatabaseUrl(
                f"not a database URL: {_masked(self.url)} (e.g. sqlite:///tripwire.db or "
                "postgresql://USER:PASSWORD@HOST:5432/DB; percent-encode @ : / # in a password)"
            ) from None
        if "@" in (parsed.host or ""):
            raise BadDatabaseUrl(
                f"{_masked(self.url)}: the user or password holds a raw '@'; percent-encode it "
                "(@ is %40)"
            )
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        path = _sqlite_path(self.url)
        if path is not None and not create and not path.exists():
            raise BadDatabaseUrl(
                f"no database at {path.resolve()}: name one with --db or $TRIPWIRE_DB_URL, "
                "or train a run into this one first"
            )
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict = {"pool_pre_ping": pool_pre_ping, "future": True}
        if self.is_sqlite:
            kwargs["connect_args"] = {
                "check_same_thread": False,
                "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
            }
        else:
            kwargs["connect_args"] = {"connect_timeout": 5}
        try:
            self.engine = create_engine(self.url, **kwargs)
        except (NoSuchModuleError, ImportError) as exc:
            raise BadDatabaseUrl(
                f"{redact_url(self.url)}: no driver for it here ({exc}); Tripwire stores to "
                "SQLite, or to PostgreSQL with pip install 'tripwire[postgres]'"
            ) from None
        if self.is_sqlite:
            _configure_sqlite(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._offset: tuple[float, timedelta] | None = None  # (measured at, monotonic; offset)

    def now(self) -> datetime:
        """Naive UTC now by the database server's clock, the one clock every process compares
        times on: a trainer's heartbeat with the scheduler's now, say. Machines whose clocks
        disagree (a laptop's Docker VM minutes behind after a sleep) then do not see a live run
        as stalled. SQLite: this machine's clock."""
        return utcnow() + self.clock_offset()

    def clock_offset(self) -> timedelta:
        """The database server's clock minus this machine's (zero for SQLite, and under a
        second), measured at first use and again every ``CLOCK_CHECK_S`` seconds."""
        if self.is_sqlite:
            return timedelta(0)
        at = time.monotonic()
        if self._offset is None or at - self._offset[0] > CLOCK_CHECK_S:
            with self.session() as s:
                before = time.time()
                server = s.scalar(text("select clock_timestamp() at time zone 'UTC'"))
                after = time.time()
            here = datetime.fromtimestamp((before + after) / 2, timezone.utc).replace(tzinfo=None)
            # Under a second is the measurement's own noise (the round trip): clocks agree.
            offset = server - here if abs(server - here) >= timedelta(seconds=1) else timedelta(0)
            self._offset = (at, offset)
        return self._offset[1]

    def __repr__(self) -> str:
        return f"Database({redact_url(self.url)!r})"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One unit of work: commits on success, rolls back on error. Driver errors become
        :class:`RowsRejected` where the database refused the data (retrying cannot help), else
        :class:`StoreUnavailable`."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except (DataError, IntegrityError) as exc:
            session.rollback()
            raise RowsRejected(f"{redact_url(self.url)}: {_first_line(exc)}") from exc
        except (OperationalError, DBAPIError) as exc:
            session.rollback()
            raise StoreUnavailable(f"{redact_url(self.url)}: {_first_line(exc)}") from exc
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def schema_status(self) -> tuple[str | None, str]:
        """(current revision, head revision) of this database."""
        try:
            with self.engine.connect() as conn:
                current = migrate.current_revision(conn)
        except (OperationalError, DBAPIError) as exc:
            raise StoreUnavailable(f"{redact_url(self.url)}: {_first_line(exc)}") from exc
        return current, migrate.head_revision()

    @contextmanager
    def _schema_change(self) -> Iterator[Connection]:
        """One transaction that changes the schema; driver errors → StoreUnavailable.

        On SQLite it takes the write lock first: pysqlite runs DDL outside any transaction, so
        two processes creating one new file at once (trainers started together) interleaved
        their migrations ("table projects already exists"). Now the second waits for the first
        (the busy timeout) and then finds the schema made.
        """
        try:
            with self.engine.begin() as conn:
                if self.is_sqlite:
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                yield conn
        except (OperationalError, DBAPIError) as exc:
            raise StoreUnavailable(f"{redact_url(self.url)}: {_first_line(exc)}") from exc

    def upgrade(self) -> tuple[str | None, str]:
        """Apply every pending migration; returns (revision before, revision after)."""
        with self._schema_change() as conn:
            before = migrate.current_revision(conn)
            if before is not None and not migrate.is_known(before):
                raise SchemaOutOfDate(_newer_message(before))
            migrate.upgrade(conn)
            after = migrate.current_revision(conn)
        return before, after

    def ensure_schema(self) -> None:
        """Refuse an out-of-date schema, except that a SQLite file without tables is created on
        the spot."""
        current, head = self.schema_status()
        if current is None and self.is_sqlite:
            current = self._create_if_empty()
        if current == head:
            return
        fix = f"tripwire db upgrade {db_argument(self.url)}"
        if current is None:
            raise SchemaOutOfDate(f"the database has no Tripwire schema; create it with: {fix}")
        if not migrate.is_known(current):
            raise SchemaOutOfDate(_newer_message(current))
        raise SchemaOutOfDate(
            f"the database schema is out of date ({current}, head {head}); run: {fix}"
        )

    def _create_if_empty(self) -> str | None:
        """Create the schema in this SQLite file if it has no tables; returns its revision then
        (None: the file holds tables of something else). Another process may have created it
        meanwhile: it is judged again under the write lock."""
        with self._schema_change() as conn:
            if migrate.current_revision(conn) is None and not inspect(conn).get_table_names():
                migrate.upgrade(conn)
            return migrate.current_revision(conn)

    def dispose(self) -> None:
        self.engine.dispose()


def _newer_message(current: str) -> str:
    return (
        f"the database schema ({current}) is newer than this Tripwire "
        f"(head {migrate.head_revision()}); upgrade Tripwire (pip install -U tripwire)"
    )


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return text[0] if text else type(orig).__name__
