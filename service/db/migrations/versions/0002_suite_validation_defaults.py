"""suites keep their validation split and include_defaults

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 21:55:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A suite registered before this revision had its validation setting dropped: it gets the
    # default it was silently run with (0.4, optimizer.spec.DEFAULT_VALIDATION).
    with op.batch_alter_table("mergeopt_suites") as batch:
        batch.add_column(sa.Column("validation", sa.Float(), nullable=False, server_default="0.4"))
        batch.add_column(sa.Column("include_defaults", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("mergeopt_suites") as batch:
        batch.drop_column("include_defaults")
        batch.drop_column("validation")
