"""Indexes on ``layer_stats.layer_id`` and ``layer_stat_buckets.layer_id``.

Deleting a run deletes its layers, and each deleted layer's foreign keys cascade into these two
tables by ``layer_id`` alone, which neither key starts with: every layer scanned the whole
table. With 2 M other layer-stat rows a 50-layer run took 11 s to delete on PostgreSQL; with
the index, about 0.1 s.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_layer_stats_layer", "layer_stats", ["layer_id"])
    op.create_index("ix_layer_stat_buckets_layer", "layer_stat_buckets", ["layer_id"])


def downgrade() -> None:
    op.drop_index("ix_layer_stat_buckets_layer", table_name="layer_stat_buckets")
    op.drop_index("ix_layer_stats_layer", table_name="layer_stats")
