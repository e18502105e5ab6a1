"""Connections to the registry database: Postgres when deployed, SQLite when embedded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.orm import Session, sessionmaker


READ_ONLY = "diet_read_only"  # an execution option: this connection's transactions only read


# Requests may hold a route session (service.deps.SessionDep) SESSIONS_AT_ONCE at a time, and each of
# the API's worker threads (anyio's default: 40) may open one more of its own (token checks, downloads):
# the pool has a connection for all of them, so no thread ever waits on the pool for a connection held
# by a request that waits for a thread.
SESSIONS_AT_ONCE = 20
POOL = {"pool_size": 10, "max_overflow": SESSIONS_AT_ONCE + 40 - 10}


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, parsed.database)
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = 5  # fail fast into a 503 rather than hang a request
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args, **POOL)


def _sqlite_engine(url: str, database: str | None) -> Engine:
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **POOL)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Leave transaction control to the "begin" hook below (pysqlite would otherwise BEGIN lazily).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the worker's writes
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # API and worker write from two processes. A deferred transaction that reads and then
        # writes fails at once with SQLITE_BUSY when the other wrote meanwhile; an immediate one
        # waits its turn (busy_timeout). Transactions here are short, so serialising them is cheap.
        # Sessions that only read (READ_ONLY) begin deferred: under WAL they never wait for a writer,
        # and many concurrent reads do not queue for the write lock.
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


class Database:
    """An engine and its session factories."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.read_sessions = sessionmaker(self.engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def session(self) -> Session:
        return self.sessions()

    def read_session(self) -> Session:
        """A session for work that only reads (GET requests, token checks): it never takes SQLite's write lock."""
        return self.read_sessions()

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()
