"""The registry: tokens, streams, blocks, jobs, dataset versions.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTIVE_JOB = sa.text("status IN ('queued', 'running')")


def _utc(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        _utc("created_at"),
        _utc("revoked_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tokens")),
        sa.UniqueConstraint("token_sha256", name=op.f("uq_tokens_token_sha256")),
    )
    op.create_table(
        "streams",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("schema", sa.JSON(), nullable=False),
        sa.Column("reference", sa.JSON(), nullable=False),
        sa.Column("distill", sa.JSON(), nullable=False),
        _utc("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_streams")),
        sa.UniqueConstraint("name", name=op.f("uq_streams_name")),
    )
    op.create_table(
        "blocks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("stream_id", sa.Integer(), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=512), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        _utc("time_min", nullable=True),
        _utc("time_max", nullable=True),
        sa.Column("label_rates", sa.JSON(), nullable=False),
        _utc("created_at"),
        sa.ForeignKeyConstraint(["stream_id"], ["streams.id"], name=op.f("fk_blocks_stream_id_streams")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_blocks")),
        sa.UniqueConstraint("stream_id", "sha256", name=op.f("uq_blocks_stream_id_sha256")),
        sa.UniqueConstraint("stream_id", "stage", name=op.f("uq_blocks_stream_id_stage")),
    )
    op.create_index(op.f("ix_blocks_stream_id"), "blocks", ["stream_id"])
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("stream_id", sa.Integer(), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("block_id", sa.Integer(), nullable=False),
        sa.Column("after_job_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("overrides", sa.JSON(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("progress", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _utc("created_at"),
        _utc("updated_at"),
        _utc("started_at", nullable=True),
        _utc("finished_at", nullable=True),
        _utc("heartbeat_at", nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')", name=op.f("ck_jobs_status")
        ),
        sa.ForeignKeyConstraint(["after_job_id"], ["jobs.id"], name=op.f("fk_jobs_after_job_id_jobs")),
        sa.ForeignKeyConstraint(["block_id"], ["blocks.id"], name=op.f("fk_jobs_block_id_blocks")),
        sa.ForeignKeyConstraint(["stream_id"], ["streams.id"], name=op.f("fk_jobs_stream_id_streams")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index("ix_jobs_stream_id_status", "jobs", ["stream_id", "status"])
    op.create_index(
        "uq_jobs_active_stage",
        "jobs",
        ["stream_id", "stage"],
        unique=True,
        sqlite_where=ACTIVE_JOB,
        postgresql_where=ACTIVE_JOB,
    )
    op.create_table(
        "dataset_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("stream_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("blocks", sa.JSON(), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("new_rows", sa.BigInteger(), nullable=False),
        sa.Column("kept_rows", sa.BigInteger(), nullable=False),
        sa.Column("history_rows", sa.BigInteger(), nullable=False),
        sa.Column("ratio", sa.Double(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("artifacts", sa.JSON(), nullable=False),
        _utc("created_at"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_dataset_versions_job_id_jobs")),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["dataset_versions.id"], name=op.f("fk_dataset_versions_parent_id_dataset_versions")
        ),
        sa.ForeignKeyConstraint(["stream_id"], ["streams.id"], name=op.f("fk_dataset_versions_stream_id_streams")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dataset_versions")),
        sa.UniqueConstraint("job_id", name=op.f("uq_dataset_versions_job_id")),
        sa.UniqueConstraint("stream_id", "number", name=op.f("uq_dataset_versions_stream_id_number")),
    )


def downgrade() -> None:
    op.drop_table("dataset_versions")
    op.drop_index("uq_jobs_active_stage", table_name="jobs")
    op.drop_index("ix_jobs_stream_id_status", table_name="jobs")
    op.drop_table("jobs")
    op.drop_index(op.f("ix_blocks_stream_id"), table_name="blocks")
    op.drop_table("blocks")
    op.drop_table("streams")
    op.drop_table("tokens")
