"""REST API benchmark: latency and requests/s of a real ``shipyard serve`` over loopback.

It starts ``shipyard serve`` as a subprocess on a free loopback port with a throwaway database
(a SQLite file in a temporary directory, or with ``--database-url`` a fresh ``bench_api_<random>``
PostgreSQL database, dropped afterwards), an admin token and a pipelines directory holding one
pipeline whose single stage deploys to ``production`` with one job (``true``). The server is
started once to register the pipeline and stopped; the database is then seeded with
``--seed-runs`` finished runs (run, stage, job and deployment rows, generated inside the
database by bulk ``INSERT ... SELECT`` statements in one transaction), and the server is
started again.

N concurrent aiohttp clients (``--clients``) then drive three scenarios:

  runs         GET  /api/v1/runs/{id}                      (random seeded runs: uncached reads)
  deployments  GET  /api/v1/environments/production/deployments   (first page, 50 rows)
  triggers     POST /api/v1/pipelines/bench/runs  with {}  (the built-in runner executes them)
  metrics      GET  /metrics  (with SHIPYARD_METRICS_TOKEN; only with --scenarios metrics)

each in two modes: ``max`` (closed loop: every client sends its next request as soon as the
last one is answered; gives the throughput) and ``paced`` (open loop at a fixed rate, the
target rate, latency measured from when each request was due, so a server that falls behind
is charged for the wait; gives the latency at that load). In a closed loop the mean latency is
clients / throughput (Little's law), so p99 targets are judged on the paced run.

Beside each phase: the server process's CPU (100 % = one core, all its threads), this process's
(the clients'), and how busy the whole machine was: the runner's jobs (``true`` under the job
supervisor, one process pair per job) and anything else running on the machine show there.
``--capacity 0`` turns the built-in runner off, leaving triggered runs queued: the trigger path
of the API on its own.

    python -m bench.api                     # 1,000,000 seeded runs, 10 s per phase
    python -m bench.api --quick             # 10,000 seeded runs, 2 s per phase (< 30 s)
    python -m bench.api --database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres
    python -m bench.api --scenarios runs --modes max --clients 64 --duration 5 --explain
    python -m bench.api --quick --scenarios triggers --capacity 0

Targets: GET /runs/{id} >= 1,000 req/s with p99 <= 25 ms; triggers >= 200/s with p99 <= 50 ms;
deployments p99 <= 10 ms with 1,000,000 runs in the database; /metrics p99 <= 50 ms with
1,000,000 runs. With the metrics scenario the bench then measures the server's CPU while idle
(``--idle`` seconds, a scrape every 15 s), to compare with ``bench.engine``'s idle figure.

    python -m bench.api --scenarios metrics --runs 1000000 --duration 10 --idle 60
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import random
import resource
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import sqlalchemy as sa
from pydantic_core import PydanticUndefined
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
PIPELINE_NAME = "bench"
ENVIRONMENT = "production"
TOKEN = "bench-admin-token-" + uuid.uuid4().hex
PIPELINE = f"""\
# one stage that deploys to {ENVIRONMENT}, one fast job
name: {PIPELINE_NAME}
stages:
  - name: deploy
    environment: {ENVIRONMENT}
    jobs:
      - {{name: ship, run: ["true"]}}
"""


@dataclass(frozen=True)
class Target:
    rate: float  # the paced run's rate, and the throughput the max run must reach (0: none)
    p99_ms: float
    min_rps: float


TARGETS = {
    "runs": Target(rate=1000.0, p99_ms=25.0, min_rps=1000.0),
    "triggers": Target(rate=200.0, p99_ms=50.0, min_rps=200.0),
    "deployments": Target(rate=100.0, p99_ms=10.0, min_rps=0.0),
    # a scraper asks every few seconds: 10/s stands for many scrapers and replicas' dashboards
    "metrics": Target(rate=10.0, p99_ms=50.0, min_rps=0.0),
}
SCENARIOS = ("runs", "deployments", "triggers", "metrics")
#: what runs unless --scenarios says otherwise
DEFAULT_SCENARIOS = ("runs", "deployments", "triggers")

# -- small helpers ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nproc() -> int:
    with contextlib.suppress(AttributeError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads, not its children)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return float("nan"), float("nan")
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def normalize_pg_url(url: str) -> str:
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


def libpq(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as a libpq URI for psycopg."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextlib.contextmanager
def fresh_database(database_url: str | None, tmp: Path, prefix: str = "api") -> Iterator[str]:
    """A new empty database: a SQLite file under ``tmp``, or ``bench_<prefix>_<random>`` on the
    PostgreSQL server of ``database_url`` (created through its ``postgres`` database, dropped
    afterwards; the database named in the URL is never touched)."""
    if database_url is None:
        yield f"sqlite:///{tmp / 's.db'}"
        return
    url = make_url(normalize_pg_url(database_url))
    if not url.drivername.startswith("postgresql"):
        raise SystemExit("--database-url must be a postgresql+psycopg:// URL (SQLite is the default)")
    name = f"bench_{prefix}_{uuid.uuid4().hex[:12]}"
    admin_url = url.set(database="postgres")
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield url.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


# -- the server ------------------------------------------------------------------------------------


class Server:
    """``shipyard serve`` in a subprocess, its output in a log file."""

    def __init__(
        self,
        work: Path,
        database_url: str,
        capacity: int,
        env: dict[str, str] | None = None,
        *,
        metrics: bool = True,
    ) -> None:
        self.work = work
        self.database_url = database_url
        self.capacity = capacity
        #: serve ``/metrics`` (with ``SHIPYARD_METRICS_TOKEN``)
        self.metrics = metrics
        #: more variables for the server (``SHIPYARD_CONFIG``, ...)
        self.env = env or {}
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = work / "server.log"
        pipelines = work / "pipelines"
        pipelines.mkdir(parents=True, exist_ok=True)
        (pipelines / f"{PIPELINE_NAME}.yml").write_text(PIPELINE)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        script = Path(sys.executable).with_name("shipyard")
        if script.exists():
            return [str(script), "serve"]
        return [sys.executable, "-m", "bot.cli", "serve"]

    def start(self, timeout: float = 60.0) -> float:
        """Start and wait until ``/readyz`` answers 200; returns the seconds that took."""
        self.port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "SHIPYARD_DATABASE_URL": self.database_url,
            "SHIPYARD_ADMIN_TOKEN": TOKEN,
            **({"SHIPYARD_METRICS_TOKEN": TOKEN} if self.metrics else {}),
            "SHIPYARD_PIPELINES_DIR": str(self.work / "pipelines"),
            "SHIPYARD_WORK_DIR": str(self.work / "work"),
            "SHIPYARD_RUNNER_NAME": "bench-runner",
            "SHIPYARD_RUNNER_CAPACITY": str(self.capacity),
            "SHIPYARD_LOG_LEVEL": "WARNING",
            **self.env,
        }
        t0 = time.perf_counter()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*self.command(), "--host", "127.0.0.1", "--port", str(self.port)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.work,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"shipyard serve exited with {self.proc.returncode}:\n{self.tail()}")
            if self._ready():
                return time.perf_counter() - t0
            time.sleep(0.05)
        self.stop()
        raise SystemExit(f"shipyard serve not ready after {timeout:.0f} s:\n{self.tail()}")

    def _ready(self) -> bool:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(self.base + "/readyz", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout: float = 30.0) -> float:
        """SIGINT (a graceful shutdown), SIGKILL after ``timeout``; returns the seconds it took."""
        t0 = time.perf_counter()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"  note: the server did not stop within {timeout:.0f} s; killing it")
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        return time.perf_counter() - t0

    def cpu(self) -> float:
        return process_cpu(self.proc.pid) if self.proc is not None else float("nan")

    def tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


# -- seeding ---------------------------------------------------------------------------------------

SEED_TABLES = ("run", "stage", "job", "deployment")


def model_default(table: sa.Table, column: sa.Column[Any]) -> tuple[bool, Any]:
    """(found, value): what the application writes into ``column`` when it is given no value,
    from the column's own default or its SQLModel field's default (or default factory)."""
    from sqlmodel import SQLModel

    default = column.default
    if isinstance(default, sa.ColumnDefault) and default.is_scalar:
        return True, default.arg
    pending = list(SQLModel.__subclasses__())
    while pending:
        model = pending.pop()
        pending.extend(model.__subclasses__())
        if getattr(model, "__table__", None) is table and column.key in model.model_fields:
            value = model.model_fields[column.key].get_default(call_default_factory=True)
            if value is not PydanticUndefined:
                return True, value
    return False, None


def insert_select(table: sa.Table, values: dict[str, str], source: str) -> sa.TextClause:
    """``INSERT INTO table (...) SELECT ... source`` writing ``values`` (column -> SQL expression)
    and, for every other column that needs a value (NOT NULL, no server default, not an
    autoincrement key), the application's own default for it as a bound parameter: a column
    added to storage/tables.py is seeded the way the application would write it. Fails loudly
    when a column the seeder writes is gone, or a new column needs a value and has no default."""
    columns = table.columns
    unknown = sorted(set(values) - set(columns.keys()))
    names = list(values)
    exprs = [values[c] for c in names]
    binds = []
    lacking = []
    for c in columns:
        if (
            c.name in values
            or c.nullable
            or c.server_default is not None
            or (c.primary_key and c.autoincrement is not False and isinstance(c.type, sa.Integer))
        ):
            continue
        found, value = model_default(table, c)
        if not found:
            lacking.append(c.name)
            continue
        names.append(c.name)
        exprs.append(f":default_{c.name}")
        binds.append(sa.bindparam(f"default_{c.name}", value, type_=c.type))
    if unknown or lacking:
        problems = [f"it writes {unknown}, which are gone"] if unknown else []
        problems += [f"{lacking} need a value and have no default"] if lacking else []
        raise SystemExit(
            f"bench.api seeds table {table.name} with columns that no longer match storage/tables.py: "
            + "; ".join(problems)
        )
    sql = f"INSERT INTO {table.name} ({', '.join(names)}) SELECT {', '.join(exprs)} {source}"
    return sa.text(sql).bindparams(*binds)


@dataclass
class Seeded:
    runs: int
    seconds: float
    sample_ids: list[str]
    rows: int
    timings: dict[str, float]


class Dialect:
    """The few SQL expressions the seeding statements spell differently per backend."""

    def __init__(self, sqlite: bool) -> None:
        self.sqlite = sqlite

    def series(self) -> str:
        """Rows 1..:n, as ``x``."""
        if self.sqlite:
            recursive = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < :n)"
            return f"({recursive} SELECT x FROM n)"
        return "generate_series(1, :n) AS n(x)"

    def hex_id(self, nbytes: int) -> str:
        if self.sqlite:
            return f"lower(hex(randomblob({nbytes})))"
        return (
            "left("
            + " || ".join(["md5(random()::text || x::text)"] * ((2 * nbytes + 31) // 32))
            + f", {2 * nbytes})"
        )

    def ts(self, minutes: str, seconds: int = 0) -> str:
        """:start + ``minutes`` minutes + ``seconds`` s, as the column stores it (naive UTC)."""
        if self.sqlite:  # SQLAlchemy's storage format for DateTime on SQLite
            return f"datetime(:start, '+' || ({minutes} * 60 + {seconds}) || ' seconds') || '.000000'"
        return f"CAST(:start AS timestamp) + ({minutes} * 60 + {seconds}) * interval '1 second'"


def seed_values(d: Dialect) -> dict[str, dict[str, str]]:
    """Per table, column -> SQL expression: ``:n`` finished runs of pipeline ``:p``, oldest first,
    all computed inside the database: 95 % succeeded, 5 % failed (every 20th), each with one
    stage deploying to ``ENVIRONMENT``, one job, and its deployment record."""
    failed = "x % 20 = 7"
    run = {
        "id": d.hex_id(16),
        "number": "x",
        "pipeline": ":p",
        "pipeline_version": ":version",
        "version_id": ":version_id",
        "status": f"CASE WHEN {failed} THEN 'failed' ELSE 'succeeded' END",
        "parameters": "'{}'",
        "source_revision": d.hex_id(20),
        "triggered_by": "'seed'",
        "trigger_channel": "'cli'",
        "requested_by": """'["seed"]'""",
        "idempotency_key": "NULL",
        "retry_of": "NULL",
        "warnings": "'[]'",
        "reason": f"CASE WHEN {failed} THEN 'job ship failed (exit code 1)' ELSE '' END",
        "created_at": d.ts("x"),
        "started_at": d.ts("x", 1),
        "finished_at": d.ts("x", 30),
        "version": "6",
    }
    stage = {
        "id": "id || '.s0'",
        "run_id": "id",
        "position": "0",
        "name": "'deploy'",
        "environment": f"'{ENVIRONMENT}'",
        "status": "status",
        "reason": "reason",
        "started_at": "started_at",
        "finished_at": "finished_at",
    }
    job = {
        "id": "id || '.s0.j0'",
        "run_id": "id",
        "stage_index": "0",
        "position": "0",
        "name": "'ship'",
        "status": "status",
        "attempt": "1",
        "failures": "CASE WHEN status = 'failed' THEN 1 ELSE 0 END",
        "retries": "0",
        "allow_failure": "FALSE",
        "timeout_s": "3600.0",
        "runner": "'bench-runner'",
        "lease_expires_at": "NULL",
        "exit_code": "CASE WHEN status = 'failed' THEN 1 ELSE 0 END",
        "outputs": "'{}'",
        "reason": "reason",
        "queued_at": "created_at",
        "started_at": "started_at",
        "finished_at": "finished_at",
    }
    deployment = {  # the id is the database's: in run order (below), so it grows with run numbers
        "environment": f"'{ENVIRONMENT}'",
        "pipeline": "pipeline",
        "run_id": "id",
        "run_number": "number",
        "stage": "'deploy'",
        "status": "status",
        "revision": "source_revision",
        "parameters": "'{}'",
        "triggered_by": "triggered_by",
        "started_at": "started_at",
        "finished_at": "finished_at",
    }
    return {"run": run, "stage": stage, "job": job, "deployment": deployment}


def seed_statements(d: Dialect) -> list[tuple[str, sa.TextClause]]:
    """(table, INSERT ... SELECT): the runs from a series, the rest from the runs."""
    source = {
        "run": f"FROM {d.series()}",
        "stage": "FROM run WHERE pipeline = :p",
        "job": "FROM run WHERE pipeline = :p",
        "deployment": "FROM run WHERE pipeline = :p ORDER BY number",
    }
    from storage.tables import T

    return [(name, insert_select(T[name], values, source[name])) for name, values in seed_values(d).items()]


def seed(url: str, n: int, sample: int, analyze: bool) -> Seeded:
    """Write ``n`` finished runs with bulk ``INSERT ... SELECT`` statements in one transaction.

    The four tables' indexes that back no constraint are dropped first and created again, from
    their own definitions, once the rows are in (building an index once is several times faster
    than keeping it up to date row by row). The database is a throwaway one: on SQLite the load
    runs without a journal; on PostgreSQL, where the role may, without foreign-key triggers."""
    sqlite = url.startswith("sqlite")
    statements = seed_statements(Dialect(sqlite))  # first: fails early if the schema moved
    # on SQLite, BEGIN is ours to send (as in storage/db.py): the driver's implicit one would
    # leave the DROP INDEX statements outside the transaction
    connect_args = {"isolation_level": None} if sqlite else {}
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args=connect_args)
    params = _seed_params(engine, n, sqlite)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with engine.connect() as conn:
        if sqlite:
            conn.exec_driver_sql("PRAGMA journal_mode=OFF")
            conn.exec_driver_sql("PRAGMA synchronous=OFF")
            conn.exec_driver_sql("PRAGMA cache_size=-524288")  # 512 MB, also for sorting index keys
            conn.commit()  # ends SQLAlchemy's autobegun transaction (no-op for the driver)
        with conn.begin():
            if sqlite:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            indexes = _drop_unconstrained_indexes(conn, sqlite) if n >= 10_000 else []
            if not sqlite:  # skip the per-row foreign-key triggers (the rows are valid by construction)
                with contextlib.suppress(sa.exc.DBAPIError), conn.begin_nested():
                    conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
            for table, statement in statements:
                t = time.perf_counter()
                conn.execute(statement, params)
                timings[table] = time.perf_counter() - t
            t = time.perf_counter()
            for _name, sql in indexes:
                conn.exec_driver_sql(sql)
            if indexes:
                timings["indexes"] = time.perf_counter() - t
            t = time.perf_counter()
        timings["commit"] = time.perf_counter() - t
        if sqlite:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")  # as the server runs it
        if analyze:
            t = time.perf_counter()
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
            timings["analyze"] = time.perf_counter() - t
        seconds = time.perf_counter() - t0
        numbers = sorted(random.Random(42).sample(range(1, n + 1), min(sample, n)))
        ids: list[str] = []
        for i in range(0, len(numbers), 500):
            ids.extend(
                conn.execute(
                    sa.text("SELECT id FROM run WHERE pipeline = :p AND number IN :numbers").bindparams(
                        sa.bindparam("numbers", expanding=True)
                    ),
                    {"p": PIPELINE_NAME, "numbers": numbers[i : i + 500]},
                ).scalars()
            )
        counts = {
            t: int(conn.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar() or 0) for t in SEED_TABLES
        }
    engine.dispose()
    if counts["run"] != n or counts["deployment"] != n:
        raise SystemExit(f"seeding went wrong: {counts}")
    random.Random(7).shuffle(ids)
    return Seeded(n, seconds, ids, sum(counts.values()), timings)


def _seed_params(engine: sa.Engine, n: int, sqlite: bool) -> dict[str, Any]:
    """The seeding statements' parameters: the pipeline's version the server registered and
    a start time that puts the ``n`` runs, a minute apart, in the past. Refuses a database that
    already holds runs."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT id, version FROM pipeline_version WHERE pipeline = :p ORDER BY version DESC"),
            {"p": PIPELINE_NAME},
        ).first()
        existing = conn.execute(sa.text("SELECT count(*) FROM run")).scalar()
    if row is None:
        raise SystemExit(f"the server did not register pipeline {PIPELINE_NAME!r}")
    if existing:
        raise SystemExit(f"the database already holds {existing} runs; seeding wants an empty one")
    start = datetime.now(UTC).replace(tzinfo=None, microsecond=0) - timedelta(minutes=n + 60)
    return {
        "n": n,
        "p": PIPELINE_NAME,
        "version": int(row[1]),
        "version_id": str(row[0]),
        "start": start.isoformat(sep=" ") if sqlite else start,
    }


def _drop_unconstrained_indexes(conn: sa.Connection, sqlite: bool) -> list[Any]:
    """Drop the seeded tables' indexes that back no constraint; (name, the statement that made
    it) for each, to build them again once the rows are in."""
    tables = ", ".join(f"'{t}'" for t in SEED_TABLES)
    indexes = conn.exec_driver_sql(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
        f"AND tbl_name IN ({tables})"
        if sqlite
        else "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
        f"AND tablename IN ({tables}) AND indexname NOT IN (SELECT conname FROM pg_constraint)"
    ).all()
    for name, _sql in indexes:
        conn.exec_driver_sql(f'DROP INDEX "{name}"')
    return list(indexes)


def database_size(url: str) -> str:
    if url.startswith("sqlite"):
        path = Path(make_url(url).database or "")
        size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())
        return f"{size / 2**20:.0f} MB"
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        size = conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar()
    engine.dispose()
    return f"{int(size or 0) / 2**20:.0f} MB"


# -- query plans -----------------------------------------------------------------------------------


def explain(url: str, run_id: str) -> None:
    """The plans of the statements behind the three endpoints, as the server builds them."""
    from storage.queries import Q
    from storage.reads import DEPLOYMENT

    deployments = (
        sa.select(DEPLOYMENT)
        .where(DEPLOYMENT.c.environment == ENVIRONMENT)
        .order_by(DEPLOYMENT.c.id.desc())
        .limit(51)
    )
    current = (
        sa.select(DEPLOYMENT)
        .where(DEPLOYMENT.c.environment == ENVIRONMENT, DEPLOYMENT.c.status.in_(("succeeded", "partial")))
        .order_by(DEPLOYMENT.c.id.desc())
        .limit(1)
    )
    statements = [
        ("run_by_id", Q.run_by_id, {"id": run_id}),
        ("stages_of", Q.stages_of, {"id": run_id}),
        ("jobs_of", Q.jobs_of, {"id": run_id}),
        ("max_number (trigger)", Q.max_number, {"p": PIPELINE_NAME}),
        ("deployments page", deployments, {}),
        ("current_deployment", current, {}),
    ]
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    sqlite = url.startswith("sqlite")
    print("== query plans" + (" (EXPLAIN QUERY PLAN)" if sqlite else " (EXPLAIN ANALYZE)"))
    with engine.connect() as conn:
        for title, statement, params in statements:
            bound = statement.params(**params) if params else statement
            sql = str(bound.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
            prefix = "EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN (ANALYZE, COSTS OFF, TIMING ON) "
            rows = conn.exec_driver_sql(prefix + sql).all()
            lines = [str(r[-1]) for r in rows]
            print(f"  {title}: {' | '.join(' '.join(line.split()) for line in lines)}")
    engine.dispose()
    print()


# -- load ------------------------------------------------------------------------------------------

Send = Callable[[aiohttp.ClientSession, int], Awaitable[int]]


@dataclass
class Phase:
    scenario: str
    mode: str  # max | paced
    latencies: list[float] = field(default_factory=list)  # seconds, sorted at the end
    errors: int = 0
    first_error: str = ""
    seconds: float = 0.0
    rate: float = 0.0  # paced: the offered rate
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    machine_pct: float = 0.0  # busy share of all CPUs (server, client, the jobs the runner starts)

    @property
    def count(self) -> int:
        return len(self.latencies)

    @property
    def rps(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def ms(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000


def make_sender(scenario: str, base: str, run_ids: list[str]) -> tuple[Send, int]:
    """A coroutine function that sends request number ``i`` and returns its status."""
    if scenario == "runs":

        async def get_run(session: aiohttp.ClientSession, i: int) -> int:
            async with session.get(f"{base}/api/v1/runs/{run_ids[i % len(run_ids)]}") as response:
                await response.read()
                return response.status

        return get_run, 200
    if scenario == "metrics":

        async def scrape(session: aiohttp.ClientSession, i: int) -> int:
            async with session.get(f"{base}/metrics") as response:  # (the session sends the token)
                await response.read()
                return response.status

        return scrape, 200
    if scenario == "deployments":
        url = f"{base}/api/v1/environments/{ENVIRONMENT}/deployments"

        async def deployments(session: aiohttp.ClientSession, i: int) -> int:
            async with session.get(url) as response:
                await response.read()
                return response.status

        return deployments, 200
    url = f"{base}/api/v1/pipelines/{PIPELINE_NAME}/runs"
    headers = {"Content-Type": "application/json"}

    async def trigger(session: aiohttp.ClientSession, i: int) -> int:
        async with session.post(url, data=b"{}", headers=headers) as response:
            await response.read()
            return response.status

    return trigger, 202


async def _one(phase: Phase, send: Send, session: aiohttp.ClientSession, i: int, ok: int, t0: float) -> None:
    try:
        status = await send(session, i)
    except (TimeoutError, aiohttp.ClientError) as exc:
        phase.errors += 1
        phase.first_error = phase.first_error or f"{type(exc).__name__}: {exc}"
        return
    if status != ok:
        phase.errors += 1
        phase.first_error = phase.first_error or f"HTTP {status}"
        return
    phase.latencies.append(time.perf_counter() - t0)


async def closed_loop(
    phase: Phase,
    send: Send,
    ok: int,
    session: aiohttp.ClientSession,
    clients: int,
    seconds: float,
    count: int,
) -> None:
    """``clients`` workers, each sending its next request when the last one is answered."""
    end = time.perf_counter() + seconds
    sent = 0

    async def worker() -> None:
        nonlocal sent
        while (time.perf_counter() < end) if not count else (sent < count):
            i = sent
            sent += 1
            await _one(phase, send, session, i, ok, time.perf_counter())

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    phase.seconds = time.perf_counter() - t0


async def open_loop(
    phase: Phase,
    send: Send,
    ok: int,
    session: aiohttp.ClientSession,
    rate: float,
    seconds: float,
    count: int,
    max_inflight: int,
) -> None:
    """Requests due every 1/``rate`` s whatever happened to the earlier ones (at most
    ``max_inflight`` at once); each latency counts from when its request was due."""
    total = count or max(1, round(rate * seconds))
    slots = asyncio.Semaphore(max_inflight)
    tasks: set[asyncio.Task[None]] = set()

    async def one(i: int, due: float) -> None:
        try:
            await _one(phase, send, session, i, ok, due)
        finally:
            slots.release()

    t0 = time.perf_counter()
    for i in range(total):
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await slots.acquire()
        task = asyncio.create_task(one(i, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    phase.seconds = time.perf_counter() - t0
    phase.rate = rate


async def drive(args: argparse.Namespace, server: Server, run_ids: list[str]) -> list[Phase]:
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=30)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    phases: list[Phase] = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:
        for scenario in args.scenarios:
            send, ok = make_sender(scenario, server.base, run_ids)
            target = TARGETS[scenario]
            rate = {"runs": args.runs_rate, "triggers": args.triggers_rate, "metrics": args.metrics_rate}.get(
                scenario, args.deployments_rate
            )
            # triggers: paced first, so the backlog the max phase leaves does not load the paced one
            modes = [
                m
                for m in (("paced", "max") if scenario == "triggers" else ("max", "paced"))
                if m in args.modes
            ]
            for mode in modes:
                if args.warmup > 0:  # discarded: connections, caches, the first page of the JIT-less world
                    await closed_loop(
                        Phase(scenario, "warmup"), send, ok, session, args.clients, args.warmup, 0
                    )
                phase = Phase(scenario, mode, rate=rate if mode == "paced" else 0.0)
                cpu0, own0, (busy0, total0) = server.cpu(), own_cpu(), machine_cpu()
                if mode == "max":
                    await closed_loop(phase, send, ok, session, args.clients, args.duration, args.count)
                else:
                    inflight = max(args.clients, 4 * args.clients)
                    await open_loop(phase, send, ok, session, rate, args.duration, args.count, inflight)
                phase.server_cpu = server.cpu() - cpu0
                phase.client_cpu = own_cpu() - own0
                busy1, total1 = machine_cpu()
                phase.machine_pct = 100 * (busy1 - busy0) / max(total1 - total0, 1)
                phase.latencies.sort()
                phases.append(phase)
                print_phase(phase, target)
    return phases


async def idle(server: Server, seconds: float) -> None:
    """The server's CPU while nothing happens but a scrape every 15 s (metrics on)."""
    await asyncio.sleep(min(5.0, seconds / 4))  # (let the phases' work drain)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    cpu0, t0 = server.cpu(), time.monotonic()
    scrapes = 0
    async with aiohttp.ClientSession(headers=headers) as session:
        while (left := seconds - (time.monotonic() - t0)) > 0:
            async with session.get(f"{server.base}/metrics") as response:
                await response.read()
                scrapes += response.status == 200
            await asyncio.sleep(min(15.0, left))
    wall = time.monotonic() - t0
    cpu = server.cpu() - cpu0
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(
        f"  idle {wall:.0f} s with metrics on ({scrapes} scrapes): server CPU {100 * cpu / wall:.2f} % "
        f"of a core ({cpu:.2f} s CPU); load average {load}",
        flush=True,
    )


# -- output ----------------------------------------------------------------------------------------


def verdicts(phase: Phase, target: Target) -> str:
    out = []
    if phase.mode == "max" and target.min_rps:
        out.append(f"req/s >= {target.min_rps:,.0f}: {'PASS' if phase.rps >= target.min_rps else 'FAIL'}")
    if phase.mode == "paced":
        ok = phase.ms(99) <= target.p99_ms and phase.errors == 0
        out.append(f"p99 <= {target.p99_ms:.0f} ms at {phase.rate:,.0f}/s: {'PASS' if ok else 'FAIL'}")
        if phase.rps < 0.95 * phase.rate:
            out.append(f"(kept up only {phase.rps:,.0f}/s)")
    elif phase.mode == "max":
        informative = "within" if phase.ms(99) <= target.p99_ms else "over"
        out.append(f"(saturated: p99 {informative} the {target.p99_ms:.0f} ms target)")
    if phase.errors:
        out.append(f"{phase.errors} errors, e.g. {phase.first_error}")
    return "; ".join(out)


def print_phase(phase: Phase, target: Target) -> None:
    what = f"{phase.scenario} {phase.mode}" + (f" @{phase.rate:,.0f}/s" if phase.mode == "paced" else "")
    print(
        f"  {what:<24} {phase.count:>7,} req in {phase.seconds:5.1f} s  {phase.rps:>7,.0f} req/s  "
        f"p50 {phase.ms(50):6.1f} ms  p99 {phase.ms(99):6.1f} ms  max {phase.ms(100):6.1f} ms  "
        f"server CPU {100 * phase.server_cpu / phase.seconds:3.0f} %  "
        f"client CPU {100 * phase.client_cpu / phase.seconds:3.0f} %  "
        f"machine {phase.machine_pct:3.0f} % of {nproc()} CPUs",
        flush=True,
    )
    print(f"  {'':<24} {verdicts(phase, target)}", flush=True)


def print_summary(phases: list[Phase]) -> None:
    header = ["endpoint", "mode", "requests", "req/s", "p50 ms", "p99 ms", "max ms", "srv CPU", "machine"]
    header.append("targets")
    titles = {
        "runs": "GET /runs/{id}",
        "deployments": f"GET /environments/{ENVIRONMENT}/deployments",
        "triggers": "POST /pipelines/{id}/runs",
        "metrics": "GET /metrics",
    }
    rows = []
    for p in phases:
        mode = p.mode if p.mode == "max" else f"paced {p.rate:,.0f}/s"
        rows.append(
            [
                titles[p.scenario],
                mode,
                f"{p.count:,}",
                f"{p.rps:,.0f}",
                f"{p.ms(50):.1f}",
                f"{p.ms(99):.1f}",
                f"{p.ms(100):.1f}",
                f"{100 * p.server_cpu / p.seconds:.0f} %",
                f"{p.machine_pct:.0f} %",
                verdicts(p, TARGETS[p.scenario]),
            ]
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header[:-1])]
    print("== summary")
    print(
        "  ".join(
            h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths, strict=False))
        ),
        end="",
    )
    print("  " + header[-1])
    for row in rows:
        cells = [
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=False))
        ]
        print("  ".join(cells) + "  " + row[-1])


# -- main ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 10,000 runs, 2 s per phase")
    parser.add_argument(
        "--seed-runs",
        "--runs",
        dest="seed_runs",
        type=int,
        help="finished runs to seed (default 1,000,000; quick 10,000)",
    )
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--duration", type=float, help="seconds per phase (default 10; quick 2)")
    parser.add_argument("--count", type=int, default=0, help="requests per phase instead of --duration")
    parser.add_argument(
        "--warmup", type=float, help="seconds of unrecorded load before each phase (1; quick 0.3)"
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help="comma-separated: runs,deployments,triggers,metrics (default the first three)",
    )
    parser.add_argument(
        "--metrics-rate", type=float, default=TARGETS["metrics"].rate, help="paced scrapes/s (10)"
    )
    parser.add_argument(
        "--idle",
        type=float,
        default=None,
        help="seconds to measure the server's CPU idle after the phases, scraped every 15 s as "
        "Prometheus would (default: 60 with the metrics scenario, else 0)",
    )
    parser.add_argument("--modes", default="max,paced", help="comma-separated: max (closed loop), paced")
    parser.add_argument(
        "--runs-rate", type=float, default=TARGETS["runs"].rate, help="paced GET /runs/{id}/s"
    )
    parser.add_argument(
        "--triggers-rate", type=float, default=TARGETS["triggers"].rate, help="paced triggers/s"
    )
    parser.add_argument(
        "--deployments-rate", type=float, default=TARGETS["deployments"].rate, help="paced deployment pages/s"
    )
    parser.add_argument("--capacity", type=int, default=8, help="jobs the built-in runner runs at once (8)")
    parser.add_argument(
        "--database-url",
        help="a PostgreSQL server (postgresql+psycopg://user@host:port/...): the bench creates and drops "
        "a bench_api_<random> database there, connecting through its `postgres` database "
        "(default: a SQLite file in a temporary directory)",
    )
    parser.add_argument(
        "--analyze",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="ANALYZE after seeding (default: on PostgreSQL, as autovacuum would; off on SQLite, as "
        "Shipyard never runs it)",
    )
    parser.add_argument("--explain", action="store_true", help="print the plans of the endpoints' queries")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (SQLite file, log)")
    args = parser.parse_args(argv)
    args.seed_runs = args.seed_runs if args.seed_runs is not None else (10_000 if args.quick else 1_000_000)
    args.duration = args.duration if args.duration is not None else (2.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (0.3 if args.quick else 1.0)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    args.modes = {m.strip() for m in args.modes.split(",") if m.strip()}
    if set(args.scenarios) - set(SCENARIOS) or args.modes - {"max", "paced"} or not args.modes:
        parser.error("unknown scenario or mode")
    if args.seed_runs < 1 and "runs" in args.scenarios:
        parser.error("the runs scenario needs --seed-runs >= 1")
    if args.analyze is None:
        args.analyze = args.database_url is not None
    if args.idle is None:
        args.idle = 60.0 if "metrics" in args.scenarios else 0.0

    command = "python -m bench.api" + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")
    backend = "PostgreSQL" if args.database_url else f"SQLite {sqlite3.sqlite_version}"
    print(command)
    print(
        f"{cpu_model()}, nproc {nproc()}, Python {platform.python_version()}, aiohttp {aiohttp.__version__}, "
        f"SQLAlchemy {sa.__version__}, {backend}; {args.clients} clients, runner capacity {args.capacity}\n"
    )
    t_all = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="shipyard-bench-api-"))
    server: Server | None = None
    try:
        with fresh_database(args.database_url, tmp) as url:
            server = Server(tmp, url, args.capacity)
            took = server.start()
            print(f"== server registered pipeline {PIPELINE_NAME!r} (ready after {took:.1f} s); stopping it")
            server.stop()
            print(f"== seeding {args.seed_runs:,} finished runs (run, stage, job, deployment rows)")
            seeded = seed(url, args.seed_runs, 10_000, args.analyze)
            rate = seeded.rows / seeded.seconds if seeded.seconds else 0.0
            print(
                f"  {seeded.rows:,} rows in {seeded.seconds:.1f} s ({rate:,.0f} rows/s, "
                f"{seeded.runs / max(seeded.seconds, 1e-9):,.0f} runs/s); database {database_size(url)}"
                + ("; analyzed" if args.analyze else "")
            )
            print("  (" + ", ".join(f"{k} {v:.1f} s" for k, v in seeded.timings.items()) + ")")
            if args.explain and seeded.sample_ids:
                explain(url, seeded.sample_ids[0])
            took = server.start()
            print(f"== server restarted on {server.base} (ready after {took:.1f} s)\n")
            phases = asyncio.run(drive(args, server, seeded.sample_ids))
            if args.idle > 0:
                asyncio.run(idle(server, args.idle))
            took = server.stop()
            print(f"\n(server stopped in {took:.1f} s)")
            server = None
            print()
            print_summary(phases)
    finally:
        if server is not None:
            server.stop()
        if args.keep:
            print(f"(kept {tmp})")
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\ntotal {time.perf_counter() - t_all:.1f} s")


if __name__ == "__main__":
    main()
