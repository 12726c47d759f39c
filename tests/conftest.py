"""Shared fixtures: a fresh database on SQLite and on the real PostgreSQL server.

PostgreSQL comes from ``TRIPWIRE_TEST_PG_URL`` (default: the local server at 127.0.0.1:5432,
database ``test``). Each test gets its own schema there, dropped afterwards. With ``CI=true``
a missing PostgreSQL fails the tests instead of skipping them (``tests/needs.py``).
"""

from __future__ import annotations

import os
import uuid

import pytest
from sqlalchemy import create_engine, text

from storage import Database
from tests.needs import missing

PG_URL = os.environ.get("TRIPWIRE_TEST_PG_URL", "postgresql+psycopg://root@127.0.0.1:5432/test")


def _pg_unavailable_reason() -> str | None:
    try:
        engine = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
        return None
    except Exception as exc:  # any failure to connect means "not available"
        return f"PostgreSQL at {PG_URL} unavailable: {str(exc).splitlines()[0]}"


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """The PostgreSQL server URL; skips (or fails in CI) when it cannot be reached."""
    reason = _pg_unavailable_reason()
    if reason:
        missing(reason)
    return PG_URL


@pytest.fixture
def pg_url(pg_server_url: str):
    """A URL whose connections use a brand-new, private schema on the PostgreSQL server."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_server_url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in pg_server_url else "?"
    yield f"{pg_server_url}{sep}options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'tripwire.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request) -> str:
    """A URL of an empty database, once per backend."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_url")


@pytest.fixture
def db(db_url: str):
    """A migrated, empty Tripwire database, once on SQLite and once on PostgreSQL."""
    database = Database(db_url)
    database.upgrade()
    yield database
    database.dispose()


@pytest.fixture
def throwaway_pg(pg_server_url):
    """A PostgreSQL server of the test's own, not yet started: ``.start()``, ``.stop()``, ``.url``."""
    from tests.pgserver import ThrowawayPostgres

    server = ThrowawayPostgres()
    yield server
    server.cleanup()


@pytest.fixture
def one_thread():
    """torch on one intra-op thread for the test: on a small shared CI box extra threads wait on
    each other (2 threads ran the default demo 4x slower than 1 under load)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
