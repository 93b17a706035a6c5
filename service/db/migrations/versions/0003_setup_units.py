"""set-up is claimed unit by unit in Optuna's study attributes: the study-wide lease goes

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06 05:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # setup_owner/setup_at were a 30-minute lease nobody renewed (issue 19). A study mid-set-up
    # when this runs resumes from what it stored: its references and baseline trials are kept.
    with op.batch_alter_table("mergeopt_studies") as batch:
        batch.drop_column("setup_at")
        batch.drop_column("setup_owner")


def downgrade() -> None:
    with op.batch_alter_table("mergeopt_studies") as batch:
        batch.add_column(sa.Column("setup_owner", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("setup_at", sa.DateTime(timezone=True), nullable=True))
