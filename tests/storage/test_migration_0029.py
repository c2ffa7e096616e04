"""Migration 0029 adds ``expiry_set_at`` to environment locks and removes it on downgrade, on
both databases; a lock written before it (NULL) counts its expiry as set when it was taken."""

from __future__ import annotations

from storage.store import SqlStore
from tests.storage.test_migration_0018 import _migrate
from tests.storage.test_migration_0023 import _columns


def test_expiry_set_at_round_trip(db_url: str) -> None:
    SqlStore(db_url).dispose()  # (the schema at head)
    assert "expiry_set_at" in _columns(db_url, "environment_lock")
    _migrate(db_url, "0028", down=True)
    assert "expiry_set_at" not in _columns(db_url, "environment_lock")
    _migrate(db_url, "head")
    assert "expiry_set_at" in _columns(db_url, "environment_lock")
