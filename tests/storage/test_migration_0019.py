"""Upgrading to 0019 lets a webhook delivery hold ``environment.health_changed`` (26 characters);
downgrading removes those deliveries and that event type from subscriptions, and keeps the rest."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from storage.store import SqlStore
from storage.tables import metadata
from tests.storage.test_migration_0018 import _migrate

AT = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def _delivery(conn: sa.Connection, key: str, event_type: str) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO webhook_delivery (webhook_id, key, msg_id, event_type, event_seq, position, run_id, "
            "subject_id, body, state, attempts, next_attempt_at, last_error, created_at) VALUES "
            "('wh_1', :key, :key, :type, 1, 8, 'r', 's', '{}', 'pending', 0, :at, '', :at)"
        ),
        {"key": key, "type": event_type, "at": AT},
    )


def test_deliveries_hold_the_health_event_type_and_lose_it_on_downgrade(db_url: str) -> None:
    SqlStore(db_url).dispose()  # (the schema at head)
    engine = sa.create_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.insert(metadata.tables["webhook"]).values(
                    id="wh_1",
                    url="https://h.example/x",
                    events=["run.finished", "environment.health_changed"],
                    description="",
                    secret="s",
                    status="active",
                    status_reason="",
                    owner="admin",
                    from_seq=0,
                    consecutive_failures=0,
                    created_at=AT,
                )
            )
            _delivery(conn, "a", "run.finished")
            _delivery(conn, "b", "environment.health_changed")
        _migrate(db_url, "0018", down=True)
        with engine.connect() as conn:
            kept = conn.execute(sa.text("SELECT key, event_type FROM webhook_delivery")).all()
            events = conn.execute(sa.text("SELECT events FROM webhook")).scalar_one()
        assert [tuple(r) for r in kept] == [("a", "run.finished")]
        assert "environment.health_changed" not in str(events) and "run.finished" in str(events)
        _migrate(db_url, "head")
        with engine.begin() as conn:
            _delivery(conn, "c", "environment.health_changed")
    finally:
        engine.dispose()
