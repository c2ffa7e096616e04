"""Migration 0023 adds ``revision_time`` to runs and deployments (and the index that reads an
environment's deployments by finish time), and removes them on downgrade, on both databases."""

from __future__ import annotations

import sqlalchemy as sa

from storage.store import SqlStore
from tests.storage.test_migration_0018 import _migrate


def _columns(url: str, table: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return {c["name"] for c in sa.inspect(conn).get_columns(table)}
    finally:
        engine.dispose()


def _indexes(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return {str(i["name"]) for i in sa.inspect(conn).get_indexes("deployment")}
    finally:
        engine.dispose()


def test_revision_time_round_trip(db_url: str) -> None:
    SqlStore(db_url).dispose()  # (the schema at head)
    assert "revision_time" in _columns(db_url, "run") and "revision_time" in _columns(db_url, "deployment")
    assert "ix_deployment_env_finished" in _indexes(db_url)
    _migrate(db_url, "0022", down=True)
    assert "revision_time" not in _columns(db_url, "run") | _columns(db_url, "deployment")
    assert "ix_deployment_env_finished" not in _indexes(db_url)
    _migrate(db_url, "head")
    assert "revision_time" in _columns(db_url, "run") and "revision_time" in _columns(db_url, "deployment")
