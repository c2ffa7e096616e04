"""Upgrading to where jobs keep their lost attempts leaves existing jobs with none and lets a
lost attempt and its late result be kept; downgrading drops them and keeps the jobs."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command

from core.commands import CompleteJob, ExpireLease, ReportLateResult, TriggerRun
from core.definition import parse_pipeline
from core.model import Actor, LostAttempt
from core.runtime.service import Service
from storage.migrate import alembic_config
from storage.store import SqlStore
from tests.pipelines import one_job


def _migrate(url: str, to: str, *, down: bool = False) -> None:
    engine = sa.create_engine(url)
    try:
        config = alembic_config(engine)
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            (command.downgrade if down else command.upgrade)(config, to)
    finally:
        engine.dispose()


def _service(url: str) -> tuple[SqlStore, Service]:
    store = SqlStore(url)
    service = Service(store)
    text = one_job("lossy", retries=1)
    service.register_pipeline(parse_pipeline(text), text)
    return store, service


def _job_columns(url: str) -> tuple[set[str], list[str]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            columns = {c["name"] for c in sa.inspect(conn).get_columns("job")}
            statuses = list(conn.execute(sa.text("SELECT status FROM job")).scalars().all())
    finally:
        engine.dispose()
    return columns, statuses


def test_jobs_keep_their_lost_attempts_across_the_upgrade_and_lose_them_on_downgrade(db_url: str) -> None:
    store, service = _service(db_url)
    try:
        old = service.handle(TriggerRun(pipeline="lossy", actor=Actor("alice", "rest")))
        assert old.state is not None
    finally:
        store.dispose()
    _migrate(db_url, "0015", down=True)  # (a job from before: no lost attempts kept)
    columns, statuses = _job_columns(db_url)
    assert "lost" not in columns and statuses == ["queued"]

    _migrate(db_url, "head")
    store, service = _service(db_url)
    try:
        before = service.find_run(old.state.run.id)
        assert before is not None and before.jobs[0].lost == ()
        (claimed,) = service.claim_jobs("r1", 1, 30)
        assert service.handle(
            ExpireLease(run_id=claimed.run_id, job_id=claimed.job_id, attempt=1, force=True)
        ).accepted
        late = ReportLateResult(
            run_id=claimed.run_id,
            job_id=claimed.job_id,
            attempt=1,
            runner="r1",
            outcome="failed",
            exit_code=9,
        )
        assert service.handle(late).accepted
        (retry,) = service.claim_jobs("r2", 1, 30)
        done = CompleteJob(
            run_id=retry.run_id, job_id=retry.job_id, attempt=2, runner="r2", outcome="succeeded", exit_code=0
        )
        assert service.handle(done).accepted
        after = service.find_run(old.state.run.id)
        assert after is not None and after.run.status == "succeeded"
        reason = "lost: runner r1 its server restarted"
        assert after.jobs[0].lost == (LostAttempt(1, "r1", reason, "failed", 9),)
    finally:
        store.dispose()

    _migrate(db_url, "0015", down=True)
    columns, statuses = _job_columns(db_url)
    assert "lost" not in columns and statuses == ["succeeded"]
    _migrate(db_url, "head")
