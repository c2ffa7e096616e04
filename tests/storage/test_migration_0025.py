"""Migration 0025 makes the status indexes of ``job`` partial (queued or running jobs only) and
puts the whole ones back on downgrade, on both databases; the claim still finds queued jobs in
order afterwards."""

from __future__ import annotations

import sqlalchemy as sa

from core.commands import TriggerRun
from storage.store import SqlStore
from tests.helpers import ALICE
from tests.pipelines import THREE_BY_TWO
from tests.storage.test_migration_0018 import _migrate
from tests.storage.test_runner_labels import MakeService

PARTIAL = {"ix_job_queued", "ix_job_running_lease", "ix_job_running_runner"}
WHOLE = {"ix_job_status_queued_at", "ix_job_status_lease", "ix_job_runner"}


def _definitions(url: str) -> dict[str, str]:
    """The ``job`` table's indexes as the database states them (name → CREATE INDEX …)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                query = "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'job'"
            else:
                query = "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'job'"
            return {str(name): str(sql or "") for name, sql in conn.exec_driver_sql(query)}
    finally:
        engine.dispose()


def test_partial_job_indexes_round_trip(db_url: str, make_service: MakeService) -> None:
    SqlStore(db_url).dispose()  # (the schema at head)
    found = _definitions(db_url)
    assert PARTIAL <= found.keys() and not WHOLE & found.keys()
    assert "WHERE" in found["ix_job_queued"] and "queued" in found["ix_job_queued"]
    assert all("running" in found[name] for name in ("ix_job_running_lease", "ix_job_running_runner"))

    _migrate(db_url, "0024", down=True)
    found = _definitions(db_url)
    assert WHOLE <= found.keys() and not PARTIAL & found.keys()

    _migrate(db_url, "head")
    assert PARTIAL <= _definitions(db_url).keys()
    svc = make_service(db_url, THREE_BY_TWO)
    first = svc.handle(TriggerRun(pipeline="three", actor=ALICE)).state
    second = svc.handle(TriggerRun(pipeline="three", actor=ALICE)).state
    assert first is not None and second is not None
    taken = [a.job_id for a in svc.claim_jobs("r1", 3, 30)]
    assert taken[:2] == [f"{first.run.id}.s0.j0", f"{first.run.id}.s0.j1"]  # oldest first
    assert taken[2].startswith(second.run.id)
