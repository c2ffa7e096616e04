"""Upgrading to 0028 gives up the open deliveries of subscriptions deleted before (never sent,
and so far never pruned); other subscriptions' deliveries are untouched."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from storage.store import SqlStore
from storage.tables import metadata
from tests.storage.test_migration_0018 import _migrate
from tests.storage.test_migration_0019 import _delivery

AT = datetime(2026, 12, 8, 9, 0, tzinfo=UTC)


def test_a_deleted_subscriptions_open_deliveries_are_given_up(db_url: str) -> None:
    SqlStore(db_url).dispose()  # (the schema at head)
    _migrate(db_url, "0027", down=True)
    engine = sa.create_engine(db_url)
    try:
        with engine.begin() as conn:
            for webhook_id, status in (("wh_1", "deleted"), ("wh_2", "active")):
                conn.execute(
                    sa.insert(metadata.tables["webhook"]).values(
                        id=webhook_id,
                        url="https://h.example/x",
                        events=["run.finished"],
                        description="",
                        secret="s",
                        status=status,
                        status_reason="",
                        owner="admin",
                        from_seq=0,
                        consecutive_failures=0,
                        created_at=AT,
                    )
                )
            _delivery(conn, "a", "run.finished")  # (of wh_1)
            conn.execute(
                sa.text(
                    "INSERT INTO webhook_delivery (webhook_id, key, msg_id, event_type, "
                    "event_seq, position, run_id, subject_id, body, state, attempts, "
                    "next_attempt_at, last_error, created_at) SELECT 'wh_2', 'b', msg_id, "
                    "event_type, event_seq, position, run_id, subject_id, body, state, attempts, "
                    "next_attempt_at, last_error, created_at FROM webhook_delivery"
                )
            )
        _migrate(db_url, "head")
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT webhook_id, state, finished_at IS NOT NULL, last_error FROM webhook_delivery")
            ).all()
        assert sorted(tuple(r) for r in rows) == [
            ("wh_1", "failed", True, "not sent: the subscription was deleted"),
            ("wh_2", "pending", False, ""),
        ]
    finally:
        engine.dispose()
