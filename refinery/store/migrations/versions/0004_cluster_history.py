"""cluster history and trends: runs, lineage events, labels and trend columns on clusters,
the streaming-assignment marker on interactions

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("interactions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("cluster_checked_at", sa.DateTime(timezone=True), nullable=True)
        )
    # Failing interactions already clustered count as placed; the rest are due for assignment.
    op.execute(
        "UPDATE interactions SET cluster_checked_at = ingested_at WHERE cluster_id IS NOT NULL"
    )
    op.create_index(
        "ix_interactions_cluster_due",
        "interactions",
        ["app_id"],
        unique=False,
        sqlite_where=sa.text("failing = 1 AND cluster_id IS NULL AND cluster_checked_at IS NULL"),
        postgresql_where=sa.text(
            "failing = true AND cluster_id IS NULL AND cluster_checked_at IS NULL"
        ),
    )
    with op.batch_alter_table("clusters", schema=None) as batch_op:
        batch_op.add_column(sa.Column("vector_sum", sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column("representative_queries", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("title", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("trend", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("growth_rate", sa.Float(), nullable=True))
        batch_op.add_column(
            sa.Column("emerging", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column("emerging_reason", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("region_failure_rate", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("region_sampled", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("last_run_id", sa.String(length=40), nullable=True))
    op.create_table(
        "cluster_runs",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("app_id", sa.String(length=64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_cluster_runs_app_started", "cluster_runs", ["app_id", "started_at"], unique=False
    )
    op.create_table(
        "cluster_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("app_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("from_ids", sa.JSON(), nullable=False),
        sa.Column("to_ids", sa.JSON(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_cluster_events_app_at", "cluster_events", ["app_id", "at"], unique=False)
    op.create_index("ix_cluster_events_run_id", "cluster_events", ["run_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_cluster_events_run_id", table_name="cluster_events")
    op.drop_index("ix_cluster_events_app_at", table_name="cluster_events")
    op.drop_table("cluster_events")
    op.drop_index("ix_cluster_runs_app_started", table_name="cluster_runs")
    op.drop_table("cluster_runs")
    with op.batch_alter_table("clusters", schema=None) as batch_op:
        for column in (
            "last_run_id",
            "region_sampled",
            "region_failure_rate",
            "emerging_reason",
            "emerging",
            "growth_rate",
            "trend",
            "first_seen_at",
            "title",
            "representative_queries",
            "vector_sum",
        ):
            batch_op.drop_column(column)
    op.drop_index("ix_interactions_cluster_due", table_name="interactions")
    with op.batch_alter_table("interactions", schema=None) as batch_op:
        batch_op.drop_column("cluster_checked_at")
