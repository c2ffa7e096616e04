"""Replicas started together on one empty PostgreSQL database each upgrade the schema as they
start: they take turns (an advisory lock), so every one of them starts, and the schema is
migrated once. (Without the lock their DDL deadlocked and the replicas hung.)"""

from __future__ import annotations

import threading
import uuid

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

from storage.migrate import alembic_config, upgrade
from tests.conftest import PG_ADMIN_URL, _with_db


@pytest.mark.postgres
def test_replicas_upgrading_an_empty_database_at_once_all_succeed(pg_admin: sa.Engine) -> None:
    name = f"shipyard_up_{uuid.uuid4().hex[:10]}"
    with pg_admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = _with_db(PG_ADMIN_URL, name)
    failures: list[BaseException] = []
    start = threading.Barrier(4)

    def replica() -> None:
        start.wait()
        try:
            upgrade(url)
        except BaseException as exc:  # (collected: the test says which replica failed and how)
            failures.append(exc)

    threads = [threading.Thread(target=replica) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert failures == []
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            versions = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all()
        engine.dispose()
        assert versions == [ScriptDirectory.from_config(alembic_config()).get_current_head()]
    finally:
        with pg_admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
