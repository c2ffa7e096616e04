"""Tokens and who they are: a token acts as its principal with the roles granted; a revoked one
stops working; the configured admin token is installed once, idempotently, and a new secret for
it replaces the old one; a rotated token keeps its principal; bad names are refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core.access import Role
from core.errors import InvalidInput, NotFound
from storage.directory import Directory
from storage.store import SqlStore

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def test_tokens_act_as_their_principal_until_revoked(db_url: str) -> None:
    store = SqlStore(db_url)
    try:
        directory = Directory(store)
        runner = directory.create_token("eu-1", [Role.RUNNER], T0, by="ops")
        viewer = directory.create_token("watcher", [Role.VIEWER], T0, by="ops", groups=["sre"])
        found = directory.authenticate(runner, T0 + timedelta(seconds=1))
        assert found is not None and found.name == "eu-1" and found.roles == frozenset({Role.RUNNER})
        listed = {t.name: t for t in directory.tokens()}
        assert listed["watcher"].roles == ("viewer",) and listed["eu-1"].created_by == "ops"
        directory.revoke_token("watcher", T0 + timedelta(seconds=2))
        assert directory.authenticate(viewer, T0 + timedelta(seconds=3)) is None
        assert directory.authenticate("not-a-token", T0) is None
        with pytest.raises(NotFound, match="no active token named 'watcher'"):
            directory.revoke_token("watcher", T0 + timedelta(seconds=4))
        with pytest.raises(InvalidInput, match="token name"):
            directory.create_token("bad name!", [Role.VIEWER], T0, by="ops")
    finally:
        store.dispose()


def test_the_configured_admin_token_is_installed_once_and_a_new_secret_replaces_it(db_url: str) -> None:
    store = SqlStore(db_url)
    try:
        directory = Directory(store)
        directory.ensure_admin_token("first-secret", T0)
        directory.ensure_admin_token("first-secret", T0 + timedelta(seconds=1))  # (idempotent)
        admin = directory.authenticate("first-secret", T0 + timedelta(seconds=2))
        assert admin is not None and admin.name == "admin" and Role.ADMIN in admin.roles
        assert [t.name for t in directory.tokens()] == ["admin"]
        directory.ensure_admin_token("second-secret", T0 + timedelta(seconds=3))
        assert directory.authenticate("first-secret", T0 + timedelta(seconds=4)) is None
        again = directory.authenticate("second-secret", T0 + timedelta(seconds=4))
        assert again is not None and Role.ADMIN in again.roles
    finally:
        store.dispose()


def test_a_rotated_token_keeps_its_principal_and_grants_and_the_old_secret_stops(db_url: str) -> None:
    store = SqlStore(db_url)
    try:
        directory = Directory(store)
        old = directory.create_token("ci", [Role.RUNNER], T0, by="ops", labels=["prod-eu"])
        new = directory.rotate_token("ci")
        assert new != old and new.startswith("shy_")
        assert directory.authenticate(old, T0 + timedelta(seconds=1)) is None
        found = directory.authenticate(new, T0 + timedelta(seconds=1))
        assert found is not None and found.name == "ci"
        assert found.roles == frozenset({Role.RUNNER}) and found.labels == frozenset({"prod-eu"})
        assert [(t.name, t.revoked_at) for t in directory.tokens()] == [("ci", None)]

        directory.ensure_admin_token("from-the-variable", T0)
        with pytest.raises(InvalidInput, match="SHIPYARD_ADMIN_TOKEN's: set the variable anew"):
            directory.rotate_token("admin")
        assert directory.authenticate("from-the-variable", T0 + timedelta(seconds=1)) is not None
        directory.revoke_token("ci", T0 + timedelta(seconds=2))
        for gone in ("ci", "nosuch"):
            with pytest.raises(NotFound, match=f"no active token named '{gone}'"):
                directory.rotate_token(gone)
    finally:
        store.dispose()
