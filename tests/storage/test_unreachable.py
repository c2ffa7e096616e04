"""``SqlStore.unreachable``: which real failures mean the database could not be reached (an
outage: 503, logged once) and which are something else (a bug, a refusal: reported as such)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from core.errors import Conflict
from storage.store import SqlStore
from tests.e2e.server import free_port


def _failure(store: SqlStore, sql: str = "SELECT 1") -> BaseException:
    with pytest.raises(Exception) as caught:
        with store.transaction() as tx:
            tx.conn.exec_driver_sql(sql)
    return caught.value


def test_a_database_that_refuses_connections_is_unreachable(
    db_url: str, tmp_path: Path, stores: list[SqlStore]
) -> None:
    if db_url.startswith("sqlite"):
        (tmp_path / "a-directory").mkdir()
        gone = f"sqlite:///{tmp_path / 'a-directory'}"  # (SQLite cannot open it)
        said = "unable to open database file"
    else:
        gone = sa.engine.make_url(db_url).set(host="127.0.0.1", port=free_port()).render_as_string(False)
        said = "connection failed"
    store = SqlStore(gone)
    stores.append(store)
    reason = store.unreachable(_failure(store))
    assert reason is not None and said in reason and "\n" not in reason


def test_a_bad_statement_or_a_lost_race_is_not_an_outage(db_url: str, stores: list[SqlStore]) -> None:
    store = SqlStore(db_url)
    stores.append(store)
    assert store.unreachable(_failure(store, "SELECT nothing FROM nowhere")) is None
    assert store.unreachable(Conflict("run r1 moved on")) is None
    assert store.unreachable(ValueError("a bug")) is None


@pytest.mark.postgres
def test_a_connection_the_server_ended_is_an_outage_even_wrapped_in_a_conflict(
    pg_url: str, stores: list[SqlStore]
) -> None:
    store = SqlStore(pg_url)
    stores.append(store)
    with store.transaction() as tx:
        pid = tx.conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    killer = SqlStore(pg_url)
    stores.append(killer)
    with killer.transaction() as tx:  # as an administrator's pg_terminate_backend, or a restart
        tx.conn.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
    failure = _failure(store)  # the pooled connection is the one that was ended
    assert isinstance(failure, Conflict)  # decided again on a fresh connection, where it may work
    assert store.unreachable(failure) is not None
