"""The lookups by status go through the partial indexes that hold only the live rows (queued and
running jobs, deploying stages), however many finished runs the database keeps: a claim, the
timers' probes, a trigger's environment check, a runner listing and a metrics scrape must not
read every job ever run. The plans are asked of the database itself, with a history of finished
runs in it: on SQLite as the statements are sent, on PostgreSQL as a prepared statement's
generic plan (what it runs a statement with once it has been prepared), where a status sent as
a parameter cannot be matched to an index's condition either."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from bench.api import PIPELINE, seed
from core.definition import parse_pipeline
from core.runtime.service import Service
from storage import gauges, runners
from storage.queries import Q
from storage.store import SqlStore

#: statement → the index it must use, and the parameters it is sent with
LOOKUPS: dict[str, tuple[Any, str, dict[str, Any]]] = {
    "claim": (None, "ix_job_queued", {"runner": "r1", "labels": "[]", "limit": 4}),  # (per database)
    "expired leases": (Q.expired, "ix_job_running_lease", {"now": "2026-01-01 00:00:00", "limit": 100}),
    "what a runner holds": (Q.held_by, "ix_job_running_runner", {"runner": "r1"}),
    "anything in flight": (Q.in_flight, "ix_job_running_", {}),
    "who deploys to an environment": (
        Q.environment_running,
        "ux_stage_environment_running",
        {"env": "production"},
    ),
    "jobs waiting for a runner": (runners.QUEUED_JOBS, "ix_job_queued", {}),
    "runners' running jobs": (runners.RUNNING_BY_RUNNER, "ix_job_running_", {}),
    "the metrics' running jobs": (gauges._jobs, "ix_job_running_runner", {}),
}


@pytest.fixture
def history(db_url: str) -> Iterator[sa.Connection]:
    """A database at head holding 3,000 finished runs (a stage, a job and a deployment each)."""
    store = SqlStore(db_url)
    Service(store).register_pipeline(parse_pipeline(PIPELINE), PIPELINE)
    store.dispose()
    seed(db_url, 3_000, sample=1, analyze=True)
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def _plan(conn: sa.Connection, statement: Any, params: dict[str, Any]) -> str:
    compiled = statement.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    sql, values = str(compiled), {**compiled.params, **params}
    if conn.dialect.name == "sqlite":
        sent = tuple(values[name] for name in compiled.positiontup or ())
        return "\n".join(row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, sent))
    names: list[str] = []
    numbered = re.sub(r"%\((\w+)\)s", lambda m: f"${_number(names, m.group(1))}", sql)
    conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
    conn.exec_driver_sql("PREPARE probe AS " + numbered)
    try:
        # (the arguments as literals: the prepared statement's own parameters are typed)
        args = ", ".join(_literal(values[name]) for name in names)
        execute = f"EXPLAIN EXECUTE probe({args})" if names else "EXPLAIN EXECUTE probe"
        return "\n".join(row[0] for row in conn.exec_driver_sql(execute))
    finally:
        conn.exec_driver_sql("DEALLOCATE probe")
        conn.exec_driver_sql("RESET plan_cache_mode")


def _literal(value: Any) -> str:
    return str(value) if isinstance(value, int) else "'" + str(value).replace("'", "''") + "'"


def _number(names: list[str], name: str) -> int:
    if name not in names:
        names.append(name)
    return names.index(name) + 1


@pytest.mark.parametrize("lookup", list(LOOKUPS))
def test_status_lookups_use_the_partial_indexes(history: sa.Connection, lookup: str) -> None:
    statement, index, params = LOOKUPS[lookup]
    if statement is None:  # the claim: each database has its own (labels in JSON)
        statement = Q.claimable if history.dialect.name == "sqlite" else Q.claimable_pg
    plan = _plan(history, statement, params)
    assert index in plan, plan
    assert not re.search(r"(?m)^SCAN job$|Seq Scan on job\b|ix_stage_environment \(", plan), plan


def test_an_id_prefix_reads_a_range_of_the_run_id_index(history: sa.Connection) -> None:
    """``/deploy status 3f9a2c`` must not read every run id there is."""
    plan = _plan(history, Q.runs_by_prefix, {"low": "3f9a2c", "high": "3f9a2cg"})
    sqlite = r"SEARCH run USING (COVERING )?INDEX \w+ \(id>\? AND id<\?\)"
    assert re.search(sqlite + "|Index Only Scan using run_pkey", plan), plan


@pytest.mark.parametrize("prefix", ["0", "9", "a", "f", "09", "9f", "f9", "ff"])
def test_an_id_prefix_finds_exactly_the_runs_whose_ids_begin_with_it(
    history: sa.Connection, prefix: str
) -> None:
    """The range ends at the prefix and "g": whatever hex digit ends the prefix, the ids found
    are exactly those that begin with it (in the database's own collation)."""
    ids = history.execute(sa.select(Q.runs_by_prefix.selected_columns.id)).scalars().all()
    bounds = {"low": prefix, "high": prefix + "g"}
    found = history.execute(Q.runs_by_prefix.limit(None), bounds).scalars().all()
    assert sorted(found) == sorted(i for i in ids if i.startswith(prefix))
    assert found, f"3,000 random ids and none begins with {prefix!r}"
