"""Connecting to SQLite or PostgreSQL with the settings Shipyard relies on.

SQLite: WAL journal (readers never block the writer), a busy timeout (another process
holding the write lock makes us wait, not fail), ``synchronous=NORMAL`` (durable at every
checkpoint, no fsync per commit in WAL mode), and ``BEGIN IMMEDIATE`` so a transaction takes
the write lock up front instead of failing when it upgrades from read to write.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

BUSY_TIMEOUT_MS = 30_000


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    if is_sqlite(url):
        if url in ("sqlite://", "sqlite:///:memory:"):
            raise ValueError("use a SQLite file, not an in-memory database: the truth must survive a restart")
        engine = sa.create_engine(
            url,
            pool_size=pool_size,
            max_overflow=2,
            connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000},
        )
        _sqlite_setup(engine)
        return engine
    # no pre-ping (a round trip per transaction): a dropped connection surfaces as a retryable
    # error instead, and connections are recycled before server-side idle timeouts
    return sa.create_engine(url, pool_size=pool_size, max_overflow=2, pool_recycle=1800)


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # straight to the driver: this runs once per transaction, and is on the hot path
        begin = "BEGIN" if conn.get_execution_options().get("readonly") else "BEGIN IMMEDIATE"
        conn.connection.driver_connection.execute(begin)  # type: ignore[union-attr]
