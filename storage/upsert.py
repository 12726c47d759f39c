"""Idempotent bulk inserts: a replayed row is ignored, never written twice."""

from __future__ import annotations

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


def insert_ignore(
    session: Session, model, rows: list[dict], *, update: tuple[str, ...] = ()
) -> None:
    """INSERT rows, skipping (or, for ``update`` columns, refreshing) ones whose key exists."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(model)
    if update:
        keys = [c.name for c in model.__table__.primary_key.columns]
        stmt = stmt.on_conflict_do_update(
            index_elements=keys, set_={name: stmt.excluded[name] for name in update}
        )
    else:
        stmt = stmt.on_conflict_do_nothing()
    session.execute(stmt, rows)
