"""Upgrading to the typed deploy target and reuse columns fills them from the text older versions
wrote: a promotion's or rollback's environment from the stages it skipped (or its only
environment, when it skipped none), and reused work from ``reused from <run>``, through a chain of
retries to the run that did it; so a retry of a promotion made before the upgrade still deploys
to the same environment, and a build reused before it still hands on its artifact."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from alembic import command

from core.runtime.service import Service
from storage.migrate import alembic_config
from storage.store import SqlStore
from tests.pipelines import build_and_deploy, one_deploy

MakeService = Callable[..., Service]

#: run id -> (pipeline, number, kind, retry_of)
RUNS = {
    "r1": ("web", 1, "deploy", None),
    "r2": ("web", 2, "deploy", "r1"),
    "r3": ("web", 3, "deploy", "r2"),
    "r4": ("web", 4, "promotion", None),
    "r5": ("one", 1, "rollback", None),
}
#: (run id, position, name, environment, status, reason); each stage has one job with its status and reason
STAGES = [
    ("r1", 0, "build", None, "succeeded", ""),
    ("r1", 1, "production", "production", "failed", "job deploy exited with 1"),
    ("r2", 0, "build", None, "skipped", "reused from web#1"),
    ("r2", 1, "production", "production", "failed", "job deploy exited with 1"),
    ("r3", 0, "build", None, "skipped", "reused from web#1"),  # a retry of the retry: still web#1's work
    ("r3", 1, "production", "production", "running", ""),
    ("r4", 0, "build", None, "skipped", "promotion to production"),
    ("r4", 1, "production", "production", "failed", "job deploy exited with 1"),
    ("r5", 0, "production", "production", "succeeded", ""),  # skipped nothing: every stage deploys there
]


def _migrate(url: str, to: str, *, down: bool = False) -> None:
    engine = sa.create_engine(url)
    try:
        config = alembic_config(engine)
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            (command.downgrade if down else command.upgrade)(config, to)
    finally:
        engine.dispose()


def _write_rows_at_0012(url: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            versions = dict(conn.execute(sa.text("SELECT pipeline, id FROM pipeline_version")).all())
            for run_id, (pipeline, number, kind, retry_of) in RUNS.items():
                _insert(
                    conn,
                    "run",
                    {
                        "id": run_id,
                        "number": number,
                        "pipeline": pipeline,
                        "pipeline_version": 1,
                        "version_id": versions[pipeline],
                        "status": "failed",
                        "parameters": "{}",
                        "triggered_by": "alice",
                        "trigger_channel": "cli",
                        "retry_of": retry_of,
                        "requested_by": '["alice"]',
                        "warnings": "[]",
                        "reason": "",
                        "created_at": "2026-11-27 00:00:00",
                        "kind": kind,
                        "artifact_id": "a1" if kind != "deploy" else None,
                        "version": 0,
                    },
                )
            for run_id, position, name, environment, status, reason in STAGES:
                _insert(
                    conn,
                    "stage",
                    {
                        "id": f"{run_id}.s{position}",
                        "run_id": run_id,
                        "position": position,
                        "name": name,
                        "environment": environment,
                        "status": status,
                        "reason": reason,
                    },
                )
                _insert(
                    conn,
                    "job",
                    {
                        "id": f"{run_id}.s{position}.j0",
                        "run_id": run_id,
                        "stage_index": position,
                        "position": 0,
                        "name": "compile" if name == "build" else "deploy",
                        "status": status,
                        "attempt": 0,
                        "failures": 0,
                        "retries": 0,
                        "allow_failure": False,
                        "timeout_s": 3600.0,
                        "outputs": "{}",
                        "reason": reason,
                    },
                )
    finally:
        engine.dispose()


def _insert(conn: sa.Connection, table: str, values: dict[str, object]) -> None:
    columns = ", ".join(values)
    marks = ", ".join(f":{k}" for k in values)
    conn.execute(sa.text(f"INSERT INTO {table} ({columns}) VALUES ({marks})"), values)


def test_the_deploy_target_and_reused_work_are_filled_from_the_old_text(
    db_url: str, make_service: MakeService
) -> None:
    # the pipeline versions the runs were made from
    make_service(db_url, build_and_deploy("web"), one_deploy("one"))
    _migrate(db_url, "0012", down=True)
    _write_rows_at_0012(db_url)

    _migrate(db_url, "head")
    store = SqlStore(db_url)
    try:
        with store.transaction() as tx:
            states = {run_id: tx.load_run(run_id) for run_id in RUNS}
    finally:
        store.dispose()
    runs = {run_id: state.run for run_id, state in states.items() if state is not None}
    assert {run_id: run.deploy_to for run_id, run in runs.items()} == {
        "r1": None,
        "r2": None,
        "r3": None,
        "r4": "production",
        "r5": "production",
    }
    reused = {
        run_id: [(s.reused_from, j.reused_from) for s, j in zip(state.stages, state.jobs, strict=True)]
        for run_id, state in states.items()
        if state is not None
    }
    assert reused == {
        "r1": [(None, None), (None, None)],
        "r2": [("r1", "r1"), (None, None)],
        "r3": [("r1", "r1"), (None, None)],
        "r4": [(None, None), (None, None)],  # skipped by the promotion, not reused
        "r5": [(None, None)],
    }

    _migrate(db_url, "0012", down=True)  # the text was kept: going back loses nothing
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            assert "deploy_to" not in {c["name"] for c in sa.inspect(conn).get_columns("run")}
            reasons = conn.execute(sa.text("SELECT id, reason FROM stage ORDER BY id")).all()
    finally:
        engine.dispose()
    assert [tuple(r) for r in reasons] == [(f"{s[0]}.s{s[1]}", s[5]) for s in STAGES]
    _migrate(db_url, "head")
