"""Migration 0030 adds a schedule's ``version``, ``paused_at`` and ``paused_reason`` and removes
them on downgrade, on both databases; a schedule stored before it reads as version 1, not
paused, and still fires."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from storage.schedules import ScheduleStore
from storage.store import SqlStore
from tests.storage.test_migration_0018 import _migrate
from tests.storage.test_migration_0023 import _columns

ADDED = {"version", "paused_at", "paused_reason"}


def test_schedule_state_round_trip(db_url: str) -> None:
    SqlStore(db_url).dispose()  # (the schema at head)
    assert ADDED <= _columns(db_url, "schedule")
    _migrate(db_url, "0029", down=True)
    assert not ADDED & _columns(db_url, "schedule")
    at = datetime(2026, 3, 1, tzinfo=UTC)
    engine = sa.create_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO schedule (id, pipeline, cron, timezone, parameters, owner, source, "
                    "grace_s, next_fire_at, created_at) VALUES ('old', 'web', '0 2 * * *', 'UTC', '{}', "
                    "'alice', 'api', 3600, :at, :at)"
                ),
                {"at": at},
            )
    finally:
        engine.dispose()
    _migrate(db_url, "head")
    assert ADDED <= _columns(db_url, "schedule")
    store = SqlStore(db_url)
    try:
        (old,) = ScheduleStore(store).due(at)
        assert (old.id, old.version, old.paused_reason, old.paused_at) == ("old", 1, "", None)
    finally:
        store.dispose()
