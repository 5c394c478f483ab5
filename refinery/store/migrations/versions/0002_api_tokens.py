"""api tokens of the review API; the review queue's indexes

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    with op.batch_alter_table("proposals", schema=None) as batch_op:
        batch_op.create_index("ix_proposals_created", ["created_at", "id"], unique=False)
        batch_op.create_index(
            "ix_proposals_status_created", ["status", "created_at", "id"], unique=False
        )
        batch_op.create_index(
            "ix_proposals_kind_status_created", ["kind", "status", "created_at", "id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("proposals", schema=None) as batch_op:
        batch_op.drop_index("ix_proposals_kind_status_created")
        batch_op.drop_index("ix_proposals_status_created")
        batch_op.drop_index("ix_proposals_created")
    op.drop_table("api_tokens")
