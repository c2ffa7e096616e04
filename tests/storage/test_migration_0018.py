"""Upgrading to where analyses live adds their tables (existing runs untouched) and they work at
once; downgrading drops them and keeps everything else."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import command

from core.analysis import Health
from core.checks import CheckResult, HealthWatch, Measurement
from core.commands import TriggerRun
from core.definition import parse_pipeline
from core.model import Actor
from core.runtime.service import Service
from storage.analyses import AnalysisStore
from storage.migrate import alembic_config
from storage.store import SqlStore
from tests.pipelines import one_job

TABLES = {"analysis", "analysis_check", "measurement", "environment_health", "health_change"}
T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def _migrate(url: str, to: str, *, down: bool = False) -> None:
    engine = sa.create_engine(url)
    try:
        config = alembic_config(engine)
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            (command.downgrade if down else command.upgrade)(config, to)
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return set(sa.inspect(conn).get_table_names())
    finally:
        engine.dispose()


def test_analyses_tables_come_with_the_upgrade_and_go_with_the_downgrade(db_url: str) -> None:
    store = SqlStore(db_url)  # (a run from before the downgrade must survive it)
    try:
        service = Service(store)
        text = one_job("kept")
        service.register_pipeline(parse_pipeline(text), text)
        run = service.handle(TriggerRun(pipeline="kept", actor=Actor("alice", "rest")))
        assert run.state is not None
    finally:
        store.dispose()
    _migrate(db_url, "0017", down=True)
    assert not TABLES & _tables(db_url)

    _migrate(db_url, "head")
    assert TABLES <= _tables(db_url)
    store = SqlStore(db_url)
    try:
        analyses = AnalysisStore(store)
        analyses.ensure_health({"production": HealthWatch(checks=["smoke"])}, T0)
        (due,) = analyses.claim_due(T0, "me", 30, 10)
        smoke = Measurement("smoke", T0, CheckResult.PASSED, "200", "status 200")
        assert analyses.record(due.analysis_id, "smoke", "me", smoke, T0, HealthWatch(checks=["smoke"]))
        health = analyses.health("production")
        assert health is not None and health.state is Health.HEALTHY
        assert Service(store).find_run(run.state.run.id) is not None
    finally:
        store.dispose()

    _migrate(db_url, "0017", down=True)
    assert not TABLES & _tables(db_url) and "run" in _tables(db_url)
    _migrate(db_url, "head")
