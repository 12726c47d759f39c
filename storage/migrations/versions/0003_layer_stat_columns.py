"""Layer statistics ``update_ratio`` (relative weight change per step since the previous check)
and ``sa_c_abs_mean``/``sa_c_imbalance`` (spectral alignment of the inputs centred per batch).

Rows recorded before this revision have NULL (not measured).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

COLUMNS = ("sa_c_abs_mean", "sa_c_imbalance", "update_ratio")


def upgrade() -> None:
    with op.batch_alter_table("layer_stats") as batch:
        for name in COLUMNS:
            batch.add_column(sa.Column(name, sa.Float(precision=53), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("layer_stats") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)
