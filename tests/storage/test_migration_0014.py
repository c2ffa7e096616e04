"""Upgrading to where run messages keep their thread leaves every routed run reporting in its
channel as before; downgrading drops the thread and keeps the routes."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory

from core.commands import ReportTarget, TriggerRun
from core.definition import parse_pipeline
from core.model import Actor
from core.runtime.service import Service
from storage.migrate import alembic_config
from storage.slack import RunMessage, SlackState
from storage.store import SqlStore
from tests.pipelines import one_build


def _migrate(url: str, to: str, *, down: bool = False) -> str:
    """Migrate to ``to`` ("before": the revision 0014 follows); returns the revision reached."""
    engine = sa.create_engine(url)
    try:
        config = alembic_config(engine)
        if to == "before":
            before = ScriptDirectory.from_config(config).get_revision("0014").down_revision
            assert isinstance(before, str)
            to = before
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            (command.downgrade if down else command.upgrade)(config, to)
    finally:
        engine.dispose()
    return to


def _messages(url: str) -> list[tuple[object, ...]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text("SELECT * FROM slack_message ORDER BY run_id"))]
    finally:
        engine.dispose()


def test_routes_keep_their_channel_and_gain_a_thread(db_url: str) -> None:
    _migrate(db_url, "before", down=True)
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO slack_message (run_id, channel, ts, created_at) "
                "VALUES ('r1', 'C1', '1700000000.000100', :at), ('r2', 'C2', NULL, :at)"
            ),
            {"at": datetime(2026, 12, 1, tzinfo=UTC)},
        )
    engine.dispose()

    _migrate(db_url, "head")
    store = SqlStore(db_url)
    try:
        slack = SlackState(store)
        assert slack.message("r1") == RunMessage("r1", "C1", "1700000000.000100")
        assert slack.message("r2") == RunMessage("r2", "C2", None)
        # a run started from a thread is routed there in its own transaction
        service = Service(store)
        quick = one_build("quick")
        service.register_pipeline(parse_pipeline(quick), quick)
        asked = ReportTarget("C3", "1700000000.000200")
        started = service.handle(TriggerRun(pipeline="quick", actor=Actor("U1", "slack"), report_to=asked))
        assert started.state is not None
        run_id = started.state.run.id
        assert slack.message(run_id) == RunMessage(run_id, "C3", None, thread="1700000000.000200")
    finally:
        store.dispose()

    before = _migrate(db_url, "before", down=True)
    assert before in ("0012", "0013")
    assert {row[:3] for row in _messages(db_url)} == {
        ("r1", "C1", "1700000000.000100"),
        ("r2", "C2", None),
        (run_id, "C3", None),
    }
    _migrate(db_url, "head")
