"""Alembic, driven from code: the migrations live inside the package."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from storage.errors import SchemaOutOfDate

MIGRATIONS = Path(__file__).parent / "migrations"


def _config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(_config()).get_current_head()


def is_known(revision: str) -> bool:
    try:
        return ScriptDirectory.from_config(_config()).get_revision(revision) is not None
    except Exception:
        return False


def current_revision(connection: Connection) -> str | None:
    """The database's revision (None: no Tripwire schema). Raises :class:`SchemaOutOfDate` when
    its version table holds several, as a dump restored over a migrated database leaves it."""
    context = MigrationContext.configure(connection)
    heads = context.get_current_heads()
    if len(heads) > 1:
        raise SchemaOutOfDate(
            f"the database's alembic_version table holds several revisions ({', '.join(heads)}): "
            "a backup was restored over an existing schema; restore it into an empty database "
            "(docs/deployment.md, 'Back up and restore')"
        )
    return heads[0] if heads else None


def upgrade(connection: Connection, revision: str = "head") -> None:
    command.upgrade(_config(connection), revision)
