"""proposal claims: who took a pending proposal to review (claimed_by, claimed_at)

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("proposals") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))
    # "mine" and "unclaimed" filter the queue by claimant within a status.
    op.create_index(
        "ix_proposals_claimed_status", "proposals", ["claimed_by", "status"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_proposals_claimed_status", table_name="proposals")
    with op.batch_alter_table("proposals") as batch:
        batch.drop_column("claimed_at")
        batch.drop_column("claimed_by")
