"""Migration 0021 adds ``environment_secret`` and removes it on downgrade, on both databases;
the secrets stored under it open again with their key after a round trip."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from core.secrets import SecretsDisabled
from storage.secrets import SecretBox, SecretStore, generate_key, sealed_secrets
from storage.store import SqlStore
from tests.storage.test_migration_0018 import _migrate, _tables

AT = datetime(2026, 12, 8, 9, 0, tzinfo=UTC)


def test_secrets_table_round_trip(db_url: str) -> None:
    SqlStore(db_url).dispose()  # (the schema at head)
    _migrate(db_url, "0020", down=True)
    assert "environment_secret" not in _tables(db_url)
    _migrate(db_url, "head")
    assert "environment_secret" in _tables(db_url)

    key = generate_key()
    store = SqlStore(db_url)
    try:
        secrets = SecretStore(store, SecretBox(key))
        assert secrets.set("production", "DEPLOY_KEY", "v4lue-one", "ops", AT, "cli") is True
        assert secrets.set("production", "DEPLOY_KEY", "v4lue-two", "ops", AT, "cli") is False
        with store.reading() as tx:
            sealed = sealed_secrets(tx.conn, "production")
            assert sealed_secrets(tx.conn, "staging") == {}
        assert SecretBox(key).open("production", "DEPLOY_KEY", sealed["DEPLOY_KEY"]) == "v4lue-two"
        with pytest.raises(SecretsDisabled):
            SecretStore(store, None).set("production", "X_KEY", "v4lue", "ops", AT, "cli")
    finally:
        store.dispose()
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT environment, name, ciphertext FROM environment_secret")).all()
        assert [(r[0], r[1]) for r in rows] == [("production", "DEPLOY_KEY")]
        assert "v4lue" not in rows[0][2]
    finally:
        engine.dispose()


def test_a_token_moved_to_another_environment_does_not_open() -> None:
    box = SecretBox(generate_key())
    token = box.seal("production", "DEPLOY_KEY", "v4lue-one")
    from core.secrets import SecretKeyMismatch

    with pytest.raises(SecretKeyMismatch, match="sealed for another secret"):
        box.open("staging", "DEPLOY_KEY", token)
