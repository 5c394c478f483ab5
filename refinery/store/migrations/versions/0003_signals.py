"""failure signals: score per interaction, system signals and provenance on feedback, sessions

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("interactions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("failure_score", sa.Float(), nullable=False, server_default=sa.text("0"))
        )
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.add_column(sa.Column("session_id", sa.String(length=128), nullable=True))
        batch_op.add_column(
            sa.Column("source", sa.String(length=16), nullable=False, server_default="app")
        )
        batch_op.add_column(sa.Column("detail", sa.JSON(), nullable=True))
        batch_op.add_column(
            sa.Column("joined", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column("kafka_topic", sa.String(length=249), nullable=True))
        batch_op.add_column(sa.Column("kafka_partition", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("kafka_offset", sa.BigInteger(), nullable=True))
        batch_op.create_index("ix_feedback_unjoined", ["joined", "ingested_at"], unique=False)
    op.create_table(
        "sessions",
        sa.Column("app_id", sa.String(length=64), nullable=False),
        sa.Column("session_id", sa.String(length=128), nullable=False),
        sa.Column("last_occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("analyzed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("app_id", "session_id"),
    )
    op.create_index(
        "ix_sessions_open_quiet", "sessions", ["closed_at", "last_seen_at"], unique=False
    )
    # Existing rows: feedback already joined to its interaction is not an orphan, and a failing
    # interaction scored at least the threshold; both are exact again once an event touches them.
    op.execute(
        "UPDATE feedback SET joined = true WHERE EXISTS (SELECT 1 FROM interactions i"
        " WHERE i.app_id = feedback.app_id AND i.interaction_id = feedback.interaction_id)"
    )
    op.execute("UPDATE interactions SET failure_score = 1 WHERE failing = true")
    # Sessions seen so far count as ended: the abandon sweep does not revisit old traffic.
    op.execute(
        "INSERT INTO sessions (app_id, session_id, last_occurred_at, last_seen_at, closed_at,"
        " analyzed_at) SELECT app_id, session_id, MAX(occurred_at), MAX(ingested_at),"
        " MAX(ingested_at), MAX(ingested_at)"
        " FROM interactions GROUP BY app_id, session_id"
    )


def downgrade() -> None:
    op.drop_index("ix_sessions_open_quiet", table_name="sessions")
    op.drop_table("sessions")
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.drop_index("ix_feedback_unjoined")
        batch_op.drop_column("kafka_offset")
        batch_op.drop_column("kafka_partition")
        batch_op.drop_column("kafka_topic")
        batch_op.drop_column("joined")
        batch_op.drop_column("detail")
        batch_op.drop_column("source")
        batch_op.drop_column("session_id")
    with op.batch_alter_table("interactions", schema=None) as batch_op:
        batch_op.drop_column("failure_score")
