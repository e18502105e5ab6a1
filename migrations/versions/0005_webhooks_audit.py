"""Webhooks and their deliveries, audit jobs, and a stream's licence and audit policy.

* `webhooks`: a stream's URL, the events it wants and the secret its deliveries are signed with.
* `webhook_deliveries`: one event for one webhook, with every attempt (status code or error).
* `audits`: audit jobs (a version's candidate pool against full history), their result.
* `streams` gains `licence` (carried by exports) and `audit` (the policy: every k stages, alarm threshold).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')"


def _utc(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    with op.batch_alter_table("streams") as batch:
        batch.add_column(sa.Column("licence", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("audit", sa.JSON(), nullable=True))
    op.create_table(
        "audits",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("stream_id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("blocks", sa.JSON(), nullable=False),
        sa.Column("scheduled", sa.Boolean(), nullable=False),
        sa.Column("progress", sa.JSON(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _utc("created_at"),
        _utc("updated_at"),
        _utc("started_at", nullable=True),
        _utc("finished_at", nullable=True),
        _utc("sent_at", nullable=True),
        sa.CheckConstraint(STATUSES, name=op.f("ck_audits_status")),
        sa.ForeignKeyConstraint(["stream_id"], ["streams.id"], name=op.f("fk_audits_stream_id_streams")),
        sa.ForeignKeyConstraint(
            ["version_id"], ["dataset_versions.id"], name=op.f("fk_audits_version_id_dataset_versions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audits")),
    )
    op.create_index(op.f("ix_audits_stream_id"), "audits", ["stream_id"])
    op.create_index("ix_audits_version_id_status", "audits", ["version_id", "status"])
    op.create_table(
        "webhooks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("stream_id", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("secret", sa.String(length=200), nullable=False),
        sa.Column("events", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        _utc("created_at"),
        sa.ForeignKeyConstraint(["stream_id"], ["streams.id"], name=op.f("fk_webhooks_stream_id_streams")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhooks")),
    )
    op.create_index(op.f("ix_webhooks_stream_id"), "webhooks", ["stream_id"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("webhook_id", sa.Integer(), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("attempt_log", sa.JSON(), nullable=False),
        _utc("created_at"),
        _utc("updated_at"),
        _utc("delivered_at", nullable=True),
        _utc("sent_at", nullable=True),
        sa.CheckConstraint("status IN ('pending', 'delivered', 'failed')", name=op.f("ck_webhook_deliveries_status")),
        sa.ForeignKeyConstraint(
            ["webhook_id"], ["webhooks.id"], name=op.f("fk_webhook_deliveries_webhook_id_webhooks"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
    )
    op.create_index("ix_webhook_deliveries_webhook_id_id", "webhook_deliveries", ["webhook_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_webhook_id_id", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_index(op.f("ix_webhooks_stream_id"), table_name="webhooks")
    op.drop_table("webhooks")
    op.drop_index("ix_audits_version_id_status", table_name="audits")
    op.drop_index(op.f("ix_audits_stream_id"), table_name="audits")
    op.drop_table("audits")
    with op.batch_alter_table("streams") as batch:
        batch.drop_column("audit")
        batch.drop_column("licence")
