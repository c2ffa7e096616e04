"""Upgrading to the thread posts' own retry columns carries every post's state over from the
``ts`` column it was written into (posted, a send under way, waiting for a retry, given up),
so a retry planned before the upgrade is still made after it; downgrading writes it back."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import command

from storage.migrate import alembic_config
from storage.slack import PendingPost, SlackState
from storage.store import SqlStore

POSTS = {
    "result": "1700000000.000100",  # posted
    "gate:g1": "retry:2:1767225600.500:42",  # 2 sends failed; due at 2026-01-01 00:00:00.5, event 42
    "job:j1:1": "sending:1",  # a retry under way
    "job:j1:2": "gave-up:20",
    "lost:j1:1": None,  # the first send under way
}


def _migrate(url: str, to: str, *, down: bool = False) -> None:
    engine = sa.create_engine(url)
    try:
        config = alembic_config(engine)
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            (command.downgrade if down else command.upgrade)(config, to)
    finally:
        engine.dispose()


def _rows(url: str, *columns: str) -> dict[str, tuple[object, ...]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT key, {', '.join(columns)} FROM slack_post")).all()
    finally:
        engine.dispose()
    return {r[0]: tuple(r[1:]) for r in rows}


def test_the_retry_state_moves_out_of_ts_and_back(db_url: str) -> None:
    _migrate(db_url, "0011", down=True)
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        for key, ts in POSTS.items():
            conn.execute(
                sa.text("INSERT INTO slack_post (run_id, key, ts) VALUES ('r1', :key, :ts)"),
                {"key": key, "ts": ts},
            )
    engine.dispose()

    _migrate(db_url, "head")
    assert _rows(db_url, "ts", "status", "attempts", "seq") == {
        "result": ("1700000000.000100", "sent", 0, 0),
        "gate:g1": (None, "waiting", 2, 42),
        "job:j1:1": (None, "sending", 1, 0),
        "job:j1:2": (None, "gave_up", 20, 0),
        "lost:j1:1": (None, "sending", 0, 0),
    }
    store = SqlStore(db_url)
    try:
        slack = SlackState(store)
        due = datetime(2026, 1, 1, 0, 0, 0, 500000, tzinfo=UTC)
        assert slack.pending_posts() == [PendingPost("r1", "gate:g1", 2, due, 42)]
        assert slack.post_ts("r1", "result") == "1700000000.000100"
        assert not slack.claim_post("r1", "gate:g1", due.replace(microsecond=0))  # not due yet
        assert slack.claim_post("r1", "gate:g1", due)  # the planned retry is made
    finally:
        store.dispose()

    _migrate(db_url, "0011", down=True)
    assert _rows(db_url, "ts") == {
        "result": ("1700000000.000100",),
        "gate:g1": ("sending:2",),
        "job:j1:1": ("sending:1",),
        "job:j1:2": ("gave-up:20",),
        "lost:j1:1": (None,),
    }
    _migrate(db_url, "head")
