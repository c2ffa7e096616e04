"""Connecting to SQLite or PostgreSQL with the settings Shipyard relies on.

SQLite: WAL journal (readers never block the writer), a busy timeout (another process
holding the write lock makes us wait, not fail), ``synchronous=NORMAL`` (durable at every
checkpoint, no fsync per commit in WAL mode), and ``BEGIN IMMEDIATE`` so a transaction takes
the write lock up front instead of failing when it upgrades from read to write.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

BUSY_TIMEOUT_MS = 30_000
#: how long connecting to PostgreSQL may take, unless the URL says (``?connect_timeout=``): a
#: server that accepts the connection but never answers would otherwise hang the caller forever
CONNECT_TIMEOUT_S = 5
#: PostgreSQL shutting down or not yet taking connections (class 08, connection exceptions, too)
GONE_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})
#: SQLite failing on the database file itself rather than on a statement (lowercase prefixes)
SQLITE_GONE = (
    "unable to open database file",
    "disk i/o error",
    "database or disk is full",
    "database is locked",
)


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
    timeout = {} if "connect_timeout" in sa.make_url(url).query else {"connect_timeout": CONNECT_TIMEOUT_S}
    return sa.create_engine(url, pool_size=pool_size, max_overflow=2, pool_recycle=1800, connect_args=timeout)


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


def unreachable(exc: BaseException) -> str | None:
    """Why ``exc`` means the database could not be reached, in its driver's words (first line),
    or None when it is anything else: a refusal, a lost race, a bug. Follows explicit causes
    (``raise … from``), as SQLAlchemy and ``Conflict`` wrap driver errors; not the implicit
    context, which would blame the database for a bug raised while handling its failure."""
    seen: set[int] = set()
    found: BaseException | None = exc
    while found is not None and id(found) not in seen:
        seen.add(id(found))
        if isinstance(found, sa.exc.DBAPIError):
            if found.connection_invalidated:
                return _first_line(found.orig or found)
            if isinstance(found.orig, BaseException) and _gone(found.orig):
                return _first_line(found.orig)
        elif _gone(found):
            return _first_line(found)
        found = found.__cause__
    return None


def _gone(exc: BaseException) -> bool:
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        state = exc.sqlstate  # None: the client's own (connection refused, closed, lost)
        return state is None or state.startswith("08") or state in GONE_SQLSTATES
    if isinstance(exc, sqlite3.OperationalError):
        return str(exc).lower().startswith(SQLITE_GONE)
    return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
