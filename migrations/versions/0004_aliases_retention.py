"""Named aliases with their history, a retention policy per stream, soft deletion of versions and blocks.

* `aliases`: one row per (stream, name) pointing at a dataset version; `alias_events` keeps every
  move (from which version to which, who, when; `to_version_id` null = removed), so the history
  survives the alias itself.
* `retention_policies`: per stream, keep the newest `keep_last` versions and those younger than
  `keep_days` days; `grace_s` is how long a soft-deleted version or block stays restorable.
* `dataset_versions` and `blocks` gain `deleted_at`/`deleted_by` (soft deletion: hidden, restorable)
  and `purged_at` (the blobs are freed; the row, with its sha256 digests and stats, stays, so the
  lineage of every later version stays whole). A block with `purged_at` set is a retired block.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SOFT_DELETION_TABLES = ("dataset_versions", "blocks")


def _utc(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "aliases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("stream_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("moved_by", sa.String(length=200), nullable=False),
        _utc("moved_at"),
        sa.ForeignKeyConstraint(["stream_id"], ["streams.id"], name=op.f("fk_aliases_stream_id_streams")),
        sa.ForeignKeyConstraint(
            ["version_id"], ["dataset_versions.id"], name=op.f("fk_aliases_version_id_dataset_versions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_aliases")),
        sa.UniqueConstraint("stream_id", "name", name=op.f("uq_aliases_stream_id_name")),
    )
    op.create_index(op.f("ix_aliases_version_id"), "aliases", ["version_id"])
    op.create_table(
        "alias_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("stream_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("from_version_id", sa.Integer(), nullable=True),
        sa.Column("to_version_id", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(length=200), nullable=False),
        _utc("at"),
        sa.ForeignKeyConstraint(["stream_id"], ["streams.id"], name=op.f("fk_alias_events_stream_id_streams")),
        sa.ForeignKeyConstraint(
            ["from_version_id"],
            ["dataset_versions.id"],
            name=op.f("fk_alias_events_from_version_id_dataset_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["to_version_id"], ["dataset_versions.id"], name=op.f("fk_alias_events_to_version_id_dataset_versions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alias_events")),
    )
    op.create_index(op.f("ix_alias_events_stream_id_name"), "alias_events", ["stream_id", "name"])
    op.create_table(
        "retention_policies",
        sa.Column("stream_id", sa.Integer(), nullable=False),
        sa.Column("keep_last", sa.Integer(), nullable=True),
        sa.Column("keep_days", sa.Integer(), nullable=True),
        sa.Column("grace_s", sa.Integer(), nullable=False),
        sa.Column("updated_by", sa.String(length=200), nullable=False),
        _utc("updated_at"),
        sa.ForeignKeyConstraint(
            ["stream_id"], ["streams.id"], name=op.f("fk_retention_policies_stream_id_streams")
        ),
        sa.PrimaryKeyConstraint("stream_id", name=op.f("pk_retention_policies")),
    )
    for table in SOFT_DELETION_TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(_utc("deleted_at", nullable=True))
            batch.add_column(sa.Column("deleted_by", sa.String(length=200), nullable=True))
            batch.add_column(_utc("purged_at", nullable=True))


def downgrade() -> None:
    for table in reversed(SOFT_DELETION_TABLES):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("purged_at")
            batch.drop_column("deleted_by")
            batch.drop_column("deleted_at")
    op.drop_table("retention_policies")
    op.drop_index(op.f("ix_alias_events_stream_id_name"), table_name="alias_events")
    op.drop_table("alias_events")
    op.drop_index(op.f("ix_aliases_version_id"), table_name="aliases")
    op.drop_table("aliases")
