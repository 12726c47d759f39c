"""``runs.logged_at``: when the trainer last logged a step (its clock), beside ``heartbeat_at``,
when it last reported at all. The ``no_progress`` alert compares the two.

Runs recorded before this revision have NULL until their trainer writes again.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("logged_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    # In place (SQLite 3.35+): a batch "move and copy" drops the old runs table, and with
    # foreign keys on that cascades to every run's rows.
    with op.batch_alter_table("runs", recreate="never") as batch:
        batch.drop_column("logged_at")
