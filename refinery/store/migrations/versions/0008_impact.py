"""refinement impacts: when an approved refinement shipped and its latest verdict

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "refinement_impacts",
        sa.Column("proposal_id", sa.String(length=40), nullable=False),
        sa.Column("app_id", sa.String(length=64), nullable=False),
        sa.Column("cluster_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("approved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("applied_how", sa.String(length=16), nullable=True),
        sa.Column("applied_version", sa.String(length=128), nullable=True),
        sa.Column("verdict", sa.String(length=20), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("by_version", sa.JSON(), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("alerted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("proposal_id"),
    )
    op.create_index("ix_refinement_impacts_app", "refinement_impacts", ["app_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_refinement_impacts_app", table_name="refinement_impacts")
    op.drop_table("refinement_impacts")
