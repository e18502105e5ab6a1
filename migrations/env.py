"""Alembic environment: the same settings and engine set-up as the service, for SQLite and Postgres."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from service.registry.db import make_engine
from service.registry.tables import Base
from service.settings import get_settings

config = context.config
# `alembic` on the command line configures its logging from alembic.ini; the service
# (service.registry.migrate) runs migrations inside its own logging set-up.
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name)

url = config.attributes.get("database_url") or get_settings().database_url


def _options(dialect_name: str) -> dict[str, object]:
    # SQLite cannot ALTER most things in place: batch mode copies the table instead.
    return {"target_metadata": Base.metadata, "render_as_batch": dialect_name == "sqlite", "compare_type": True}


if context.is_offline_mode():
    context.configure(url=url, literal_binds=True, dialect_opts={"paramstyle": "named"}, **_options(url.split(":")[0]))
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(connection=connection, **_options(connection.dialect.name))
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
