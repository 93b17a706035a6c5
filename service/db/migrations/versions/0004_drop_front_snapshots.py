"""drop mergeopt_front_snapshots: written on every front change, never read (the front lives in
Optuna's study attributes; its changes are front_changed events)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("mergeopt_front_snapshots", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_mergeopt_front_snapshots_study_id"))
    op.drop_table("mergeopt_front_snapshots")


def downgrade() -> None:
    # The table as 0001 made it, empty: the snapshots written before the upgrade are gone.
    op.create_table(
        "mergeopt_front_snapshots",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("study_id", sa.String(length=32), nullable=False),
        sa.Column("trials", sa.JSON(), nullable=False),
        sa.Column("hypervolume", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["study_id"], ["mergeopt_studies.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("mergeopt_front_snapshots", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_mergeopt_front_snapshots_study_id"), ["study_id"], unique=False)
