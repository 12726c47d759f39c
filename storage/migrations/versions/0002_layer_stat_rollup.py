"""Layer-statistic rollup: per (run, layer, step bucket) extremes, so wide heatmaps skip raw rows.

A bucket is 16 checks wide (``step // (16 * runs.every)``, ``every`` 10 when unknown). Each row
keeps the first and last step it holds, the number of checks, and the minimum and maximum of the
statistics the run page draws as layer × step heatmaps. Runs recorded before this revision are
backfilled here from their raw rows (2 M rows: about 6 s of CPU on SQLite).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Frozen copies of storage.rollup's constants as of this revision (migrations never import app code).
STATS = ("grad_norm", "weight_norm", "sigma1", "stable_rank", "sa_imbalance")
CHECKS_PER_BUCKET = 16
DEFAULT_EVERY = 10


def upgrade() -> None:
    columns = [
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("layer_id", sa.Integer(), nullable=False),
        sa.Column("step_min", sa.Integer(), nullable=False),
        sa.Column("step_max", sa.Integer(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
    ]
    for stat in STATS:
        columns.append(sa.Column(f"{stat}_min", sa.Float(precision=53), nullable=True))
        columns.append(sa.Column(f"{stat}_max", sa.Float(precision=53), nullable=True))
    op.create_table(
        "layer_stat_buckets",
        *columns,
        sa.ForeignKeyConstraint(["layer_id"], ["layers.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        # Bucket before layer: the newest bucket of a run is one index lookup (storage.rollup).
        sa.PrimaryKeyConstraint("run_id", "bucket", "layer_id"),
    )
    # Backfill. MIN/MAX keep NaN the way the raw reads do: both backends sort NaN (on SQLite the
    # text 'NaN') above every number, so NaN wins a maximum and loses a minimum to any number.
    width = f"({CHECKS_PER_BUCKET} * CASE WHEN r.every >= 1 THEN r.every ELSE {DEFAULT_EVERY} END)"
    bucket = f"s.step / {width}"
    names = ["run_id", "layer_id", "bucket", "step_min", "step_max", "n"]
    values = ["s.run_id", "s.layer_id", bucket, "MIN(s.step)", "MAX(s.step)", "COUNT(*)"]
    for stat in STATS:
        names += [f"{stat}_min", f"{stat}_max"]
        values += [f"MIN(s.{stat})", f"MAX(s.{stat})"]
    op.execute(
        f"INSERT INTO layer_stat_buckets ({', '.join(names)}) "
        f"SELECT {', '.join(values)} FROM layer_stats s JOIN runs r ON r.id = s.run_id "
        f"WHERE s.step >= 0 GROUP BY s.run_id, s.layer_id, {bucket}"
    )


def downgrade() -> None:
    op.drop_table("layer_stat_buckets")
