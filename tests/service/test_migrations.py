"""Alembic migrations create exactly the tables the code declares, and come down again, on Postgres and SQLite."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from service.registry import migrate
from service.registry.tables import Base

TABLES = {
    "tokens", "streams", "blocks", "jobs", "dataset_versions", "aliases", "alias_events", "retention_policies",
    "audits", "webhooks", "webhook_deliveries",
}  # fmt: skip
HEAD = ScriptDirectory.from_config(migrate.alembic_config("sqlite://")).get_current_head()


def _check_round_trip(url: str) -> None:
    engine = create_engine(url)
    try:
        migrate.upgrade(url)
        assert TABLES <= set(inspect(engine).get_table_names())
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == HEAD
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        assert diff == [], f"migrations and service/registry/tables.py disagree: {diff}"

        migrate.upgrade(url)  # a second upgrade (every `diet serve` start) changes nothing
        migrate.downgrade(url, "base")
        assert set(inspect(engine).get_table_names()) == {"alembic_version"}
        migrate.upgrade(url)
        assert TABLES <= set(inspect(engine).get_table_names())
        # Down step by step and up again: the tables and the code agree at head again.
        migrate.downgrade(url, "0004")  # before webhooks, audits and the streams' licence and audit policy
        assert not {"audits", "webhooks", "webhook_deliveries"} & set(inspect(engine).get_table_names())
        assert not {"licence", "audit"} & {c["name"] for c in inspect(engine).get_columns("streams")}
        migrate.downgrade(url, "0003")  # before aliases, retention and soft deletion
        assert not {"aliases", "alias_events", "retention_policies"} & set(inspect(engine).get_table_names())
        assert "deleted_at" not in {c["name"] for c in inspect(engine).get_columns("dataset_versions")}
        migrate.downgrade(url, "0002")
        assert "expires_at" not in {c["name"] for c in inspect(engine).get_columns("tokens")}
        migrate.upgrade(url)
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        assert diff == [], diff
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_postgres_upgrade_and_downgrade(postgres_url):
    _check_round_trip(postgres_url)
    engine = create_engine(postgres_url)
    with engine.connect() as conn:  # the partial unique index that allows one active job per stage
        index = conn.execute(
            text("SELECT indexdef FROM pg_indexes WHERE indexname = 'uq_jobs_active_stage'")
        ).scalar_one()
    engine.dispose()
    assert "UNIQUE" in index and "WHERE" in index and "queued" in index


def test_sqlite_upgrade_and_downgrade(tmp_path):
    _check_round_trip(f"sqlite:///{tmp_path / 'registry.sqlite3'}")
