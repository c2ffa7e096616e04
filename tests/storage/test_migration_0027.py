"""Migration 0027: runners at work when labels became grants keep their jobs. Each runner with
an unrevoked token is granted the labels it last claimed with; a revoked token's runner and a
runner with no token (the built-in one) are granted none, and labels already granted are not
granted twice. Downgrade removes label grants."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from core.access import Role
from storage.directory import Directory
from storage.runners import RunnerRegistry
from storage.store import SqlStore
from storage.tables import T
from tests.storage.test_migration_0018 import _migrate

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _labels(url: str) -> list[tuple[str, str]]:
    engine = sa.create_engine(url)
    grant = T["grant"]
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(grant.c.principal, grant.c.value)
                .where(grant.c.kind == "label")
                .order_by(grant.c.principal, grant.c.value)
            )
            return [(p, v) for p, v in rows]
    finally:
        engine.dispose()


def test_runners_keep_the_labels_they_claimed_with(db_url: str) -> None:
    store = SqlStore(db_url)  # (the schema at head)
    try:
        directory, runners = Directory(store), RunnerRegistry(store)
        for name in ("eu-1", "gone", "prod-1"):
            directory.create_token(name, [Role.RUNNER], NOW, by="ops")
        directory.revoke_token("gone", NOW)
        directory.grant("prod-1", "label", "prod-eu", NOW)
        seen = {
            "eu-1": ["linux", "gpu"],
            "gone": ["prod-eu"],
            "prod-1": ["prod-eu", "linux"],
            "builtin": ["x"],
        }
        for name, labels in seen.items():
            runners.seen(name, labels=labels, version="1", capacity=1, lease_s=30, now=NOW)
    finally:
        store.dispose()
    _migrate(db_url, "0026", down=True)
    assert _labels(db_url) == []

    _migrate(db_url, "head")
    assert _labels(db_url) == [("eu-1", "gpu"), ("eu-1", "linux"), ("prod-1", "linux"), ("prod-1", "prod-eu")]
    store = SqlStore(db_url)
    try:
        held = Directory(store).principal("eu-1", datetime.now(UTC))
        assert held.labels == frozenset({"gpu", "linux"}) and held.roles == frozenset({Role.RUNNER})
    finally:
        store.dispose()
