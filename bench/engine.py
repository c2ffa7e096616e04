"""Engine benchmark: runs/s and transitions/s of the real Shipyard stack, beside the floor.

For each backend (SQLite, PostgreSQL) and executor (no-op, real ``true`` subprocesses) it builds
a Shipyard exactly as ``shipyard serve`` does (``bot.bootstrap.build``: store, service,
orchestrator with group commit, built-in runner), triggers N runs of a 3-stage x 2-job pipeline
at once and waits until every run is terminal. Then, on the same database, it does as many raw
single-row write transactions as the engine made transitions: that is the floor, and the
engine's cost per transition is reported as a multiple of it.

Two more scenarios check the resource targets: 1,000 runs parked at a manual gate (process
RSS) and an idle server with its runner (CPU time and how often it polls the database).

Every scenario runs in a child process of its own on a fresh database (a SQLite file in a
temporary directory, or a ``bench_<random>`` PostgreSQL database dropped afterwards), so
memory and CPU figures are not polluted by the scenarios before it.

    python -m bench.engine                                 # all scenarios, defaults
    python -m bench.engine --runs 1000 --backends sqlite --executors noop
    python -m bench.engine --backends sqlite --executors noop --no-parked --no-idle --repeat 3
    python -m bench.engine --backends sqlite --executors noop --no-parked --no-idle --profile --statements 20

``--profile`` runs cProfile on the event-loop thread and on the database thread(s) (each store
call is profiled on the thread that runs it) and saves both; ``--statements K`` lists the K
most frequent SQL statements per run. PostgreSQL is skipped, with a note, when it does not
answer at ``--postgres-url`` (default: ``$SHIPYARD_BENCH_POSTGRES_URL``,
``$SHIPYARD_TEST_POSTGRES_URL``, or postgres@127.0.0.1:5432/test).

Targets (from the issue): >= 300 runs/s with the no-op executor on SQLite; engine cost per
transition within 5x a raw write; 1,000 parked runs hold <= 150 MB RSS; an idle server uses no
measurable CPU (nothing polls faster than once a second).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import functools
import gc
import io
import json
import logging
import os
import platform
import pstats
import resource
import shlex
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Engine, make_url

RESULT_PREFIX = "BENCH-RESULT "
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TARGET_RUNS_PER_S = 300.0
TARGET_RATIO = 5.0
TARGET_RSS_MB = 150.0
TARGET_IDLE_CPU_PCT = 0.5

PIPELINE = """\
# 3 stages x 2 jobs, no parameters, no environments (so no run waits for another)
name: bench
stages:
  - name: build
    jobs:
      - {name: compile, run: "true"}
      - {name: test, run: "true"}
  - name: staging
    jobs:
      - {name: deploy, run: "true"}
      - {name: smoke, run: "true"}
  - name: production
    jobs:
      - {name: deploy, run: "true"}
      - {name: verify, run: "true"}
"""

#: the same pipeline behind a manual gate on its first stage: every run parks there
PARKED_PIPELINE = PIPELINE.replace("name: bench", "name: parked").replace(
    "  - name: build\n", "  - name: build\n    gate: {approvers: [release-managers]}\n", 1
)

TERMINAL = ("succeeded", "failed", "canceled")


# -- small helpers ---------------------------------------------------------------------------------


def rss_mb(field: str = "VmRSS") -> float:
    """Resident memory of this process (``VmRSS``) or its peak (``VmHWM``), in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    if field == "VmHWM":
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return float("nan")


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_busy_seconds() -> float:
    """CPU time every core of the machine has spent busy since boot (``/proc/stat``): the
    database server's share is what is left after this process' and its spawner's."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    return float("nan")


def process_tree_cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of process ``pid`` and of the children it has reaped (a spawner
    and the jobs it started), from ``/proc/<pid>/stat``; NaN when it cannot be read."""
    if pid is None:
        return float("nan")
    with contextlib.suppress(OSError, ValueError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()  # (after the command name, which may hold spaces)
        utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
        return (utime + stime + cutime + cstime) / os.sysconf("SC_CLK_TCK")
    return float("nan")


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


def normalize_pg_url(url: str) -> str:
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.removeprefix("postgres://")
    return url


def pg_version(url: str) -> str | None:
    """The server version, or None if PostgreSQL does not answer."""
    engine = sa.create_engine(url, connect_args={"connect_timeout": 3}, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return str(conn.exec_driver_sql("SHOW server_version").scalar())
    except Exception as exc:
        where = make_url(url).render_as_string()
        orig = getattr(exc, "orig", None) or exc
        reason = " ".join(str(orig).split())[:160]
        print(f"note: PostgreSQL at {where} is not reachable ({type(orig).__name__}: {reason});")
        print("      skipping the postgres scenarios (use --postgres-url URL)")
        return None
    finally:
        engine.dispose()


def reader(url: str) -> Engine:
    """An engine for the benchmark's own counting queries: plain SQLAlchemy, so on SQLite its
    reads never take the write lock (the store's engine begins every transaction IMMEDIATE)."""
    return sa.create_engine(url, poolclass=sa.pool.NullPool)


@contextlib.contextmanager
def fresh_database(backend: str, pg_url: str, tmp: Path) -> Iterator[str]:
    """A new empty database for one scenario; removed afterwards."""
    if backend == "sqlite":
        directory = Path(tempfile.mkdtemp(prefix="db-", dir=tmp))
        yield f"sqlite:///{directory / 'bench.db'}"
        return
    name = f"bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield make_url(pg_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


class SqlCounter:
    """Counts transactions and statements on an engine (a listener costs about a microsecond).
    Writes sent through the store's driver fast path (``storage/fastpath.py``) bypass SQLAlchemy's
    events, so ``statements`` counts only the statements SQLAlchemy executed."""

    def __init__(self, engine: Engine, by_text: bool = False) -> None:
        self.engine = engine
        self.by_text = by_text
        self.transactions = 0
        self.rollbacks = 0
        self.statements = 0
        self.texts: Counter[str] = Counter()
        sa_event.listen(engine, "begin", self._begin)
        sa_event.listen(engine, "rollback", self._rollback)
        sa_event.listen(engine, "before_cursor_execute", self._statement)

    def _begin(self, _conn: Any) -> None:
        self.transactions += 1

    def _rollback(self, _conn: Any) -> None:
        self.rollbacks += 1

    def _statement(self, _conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        self.statements += 1
        if self.by_text and not statement.lstrip().upper().startswith(("BEGIN", "COMMIT", "ROLLBACK")):
            self.texts[" ".join(statement.split())] += 1

    def reset(self) -> None:
        self.transactions = self.rollbacks = self.statements = 0
        self.texts.clear()

    def close(self) -> None:
        sa_event.remove(self.engine, "begin", self._begin)
        sa_event.remove(self.engine, "rollback", self._rollback)
        sa_event.remove(self.engine, "before_cursor_execute", self._statement)


class ThreadProfiles:
    """cProfile for the database threads: each store call is profiled on the thread that runs it."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self.profiles: list[cProfile.Profile] = []

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def profiled(*args: Any) -> Any:
            prof = getattr(self._local, "prof", None)
            if prof is None:
                prof = self._local.prof = cProfile.Profile()
                with self._lock:
                    self.profiles.append(prof)
            prof.enable()
            try:
                return fn(*args)
            finally:
                prof.disable()

        return profiled


def print_profile(title: str, profiles: list[cProfile.Profile], top: int, dump: Path | None) -> None:
    if not profiles:
        return
    out = io.StringIO()
    stats = pstats.Stats(profiles[0], stream=out)
    for prof in profiles[1:]:
        stats.add(prof)
    if dump is not None:
        dump.parent.mkdir(parents=True, exist_ok=True)
        stats.dump_stats(dump)
        print(f"(profile saved to {dump}; open it with python -m pstats)")
    stats.strip_dirs()
    total = getattr(stats, "total_tt", 0.0)
    print(f"\n--- profile: {title} ({total:.2f} s profiled) ---")
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
    print("\n".join(ln for ln in lines if not ln.lstrip().startswith(("Ordered by", "List reduced"))))


# -- scenarios (each runs in a child process) --------------------------------------------------------


def _settings(url: str, work: Path, pipeline: str, capacity: int) -> Any:
    from bot.config import Settings

    pipelines = work / "pipelines"
    pipelines.mkdir(parents=True, exist_ok=True)
    (pipelines / "bench.yml").write_text(pipeline)
    return Settings(
        database_url=url,
        pipelines_dir=pipelines,
        work_dir=work / "work",
        runner_name="bench-runner",
        runner_capacity=capacity,
        poll_interval=1.0,
        log_level="WARNING",
    )


async def _wait_until(check: Callable[[], int], goal: int, timeout: float, every: float = 0.05) -> int:
    """Poll ``check`` (a blocking count, run off the loop) until it reaches ``goal``."""
    deadline = time.perf_counter() + timeout
    while True:
        got = await asyncio.to_thread(check)
        if got >= goal or time.perf_counter() > deadline:
            return got
        await asyncio.sleep(every)


async def _trigger(handle: Callable[[Any], Awaitable[Any]], pipeline: str, runs: int) -> int:
    from core.commands import TriggerRun
    from core.model import Actor

    actor = Actor("bench", "cli")
    commands = [TriggerRun(pipeline=pipeline, actor=actor) for _ in range(runs)]
    decisions = await asyncio.gather(*(handle(command) for command in commands))
    refused = [d.reason for d in decisions if not d.accepted]
    if refused:
        raise SystemExit(f"{len(refused)} trigger(s) refused, e.g.: {refused[0]}")
    return len(decisions)


async def scenario_throughput(
    url: str,
    work: Path,
    executor_name: str,
    runs: int,
    capacity: int,
    profile: Path | None = None,
    statements: int = 0,
) -> dict:
    """``profile``: a directory to save cProfile stats in (profiling is off when it is None)."""
    from bot.bootstrap import build
    from core.runtime.executor import NoopExecutor, SubprocessExecutor
    from storage.migrate import upgrade

    upgrade(url)
    executor = NoopExecutor() if executor_name == "noop" else SubprocessExecutor()
    shipyard = build(_settings(url, work, PIPELINE, capacity), executor=executor, migrate=False)
    counter = SqlCounter(
        shipyard.store.engine, by_text=statements > 0
    )  # before start: adding a listener races with its dispatch
    await shipyard.start()
    gc.collect()  # as ``shipyard serve`` does once started (bot/app.py)
    gc.freeze()
    watcher = reader(url)

    def terminal_runs() -> int:
        with watcher.connect() as conn:
            query = "SELECT count(*) FROM run WHERE status IN ('succeeded', 'failed', 'canceled')"
            return int(conn.exec_driver_sql(query).scalar() or 0)

    loop_prof, db_prof = cProfile.Profile(), ThreadProfiles()
    if profile is not None:
        original_db = shipyard.orchestrator.db

        async def profiled_db(fn: Callable[..., Any], *args: Any) -> Any:
            return await original_db(db_prof.wrap(fn), *args)

        shipyard.orchestrator.db = profiled_db  # type: ignore[method-assign]
        service = shipyard.orchestrator.service  # (group commits run it on the pool directly)
        service.commit = db_prof.wrap(service.commit)  # type: ignore[method-assign]
        loop_prof.enable()

    counter.reset()
    started_at = datetime.now(UTC)
    t0, cpu0, busy0 = time.perf_counter(), cpu_seconds(), machine_busy_seconds()
    await _trigger(shipyard.orchestrator.handle, "bench", runs)
    t_triggered = time.perf_counter() - t0
    timeout = 60 + runs * (1.0 if executor_name == "subprocess" else 0.2)
    done = await _wait_until(terminal_runs, runs, timeout)
    t_seen = time.perf_counter() - t0
    cpu = cpu_seconds() - cpu0
    machine_busy = machine_busy_seconds() - busy0
    # the spawner starts with the first job, after t0: all its time and its jobs' is in the run
    spawner = getattr(executor, "spawner", None)
    spawner_cpu = process_tree_cpu_seconds(spawner.pid) if spawner is not None else 0.0
    if profile is not None:
        loop_prof.disable()
    transactions, statement_count = counter.transactions, counter.statements
    rollbacks = counter.rollbacks
    top_statements = counter.texts.most_common(statements)
    await shipyard.stop()
    counter.close()  # only once nothing runs: removing a listener races with its dispatch

    with watcher.connect() as conn:
        q = conn.exec_driver_sql
        finished = q("SELECT max(finished_at) FROM run").scalar()
        by_status = dict(q("SELECT status, count(*) FROM run GROUP BY status").all())
        transitions = int(q("SELECT count(*) FROM event WHERE to_status IS NOT NULL").scalar() or 0)
        events = int(q("SELECT count(*) FROM event").scalar() or 0)
    watcher.dispose()
    if isinstance(finished, str):  # SQLite hands raw text to exec_driver_sql
        finished = datetime.fromisoformat(finished)
    wall = t_seen
    if isinstance(finished, datetime) and done >= runs:
        last = (finished.replace(tzinfo=UTC) - started_at).total_seconds()
        if 0 < last <= t_seen:
            wall = last  # the last run's own finish time, not when the 50 ms poll noticed it

    floor = raw_floor(url, transitions)
    result = {
        "scenario": executor_name,
        "backend": "sqlite" if url.startswith("sqlite") else "postgres",
        "runs": runs,
        "completed": done,
        "statuses": {str(k): int(v) for k, v in by_status.items()},
        "capacity": capacity,
        "wall_s": wall,
        "trigger_s": t_triggered,
        "cpu_s": cpu,
        "seen_s": t_seen,
        "machine_busy_s": machine_busy,
        "spawner_cpu_s": spawner_cpu,
        "cores": nproc(),
        "transitions": transitions,
        "events": events,
        "transactions": transactions,
        "rollbacks": rollbacks,
        "statements": statement_count,
        "runs_per_s": runs / wall if wall else 0.0,
        "transitions_per_s": transitions / wall if wall else 0.0,
        "us_per_transition": wall / transitions * 1e6 if transitions else 0.0,
        **floor,
        "profiled": profile is not None,
    }
    result["ratio"] = result["us_per_transition"] / floor["us_per_write"] if floor["us_per_write"] else 0.0
    print_throughput(result)
    if top_statements:
        print("  most frequent statements (per run), besides BEGIN/COMMIT:")
        for text, n in top_statements:
            print(f"    {n / runs:6.2f}  {_short_sql(text)}")
    if profile is not None:
        stem = f"{'sqlite' if url.startswith('sqlite') else 'postgres'}-{executor_name}"
        loop_title = "event-loop thread (asyncio, orchestrator, runner)"
        print_profile(loop_title, [loop_prof], 25, profile / f"{stem}-loop.prof")
        db_title = "database thread(s) (service, engine, store, SQLAlchemy)"
        print_profile(db_title, db_prof.profiles, 40, profile / f"{stem}-db.prof")
    return result


def raw_floor(url: str, count: int) -> dict:
    """``count`` single-row INSERT transactions through SQLAlchemy Core, on an engine configured
    exactly as the store's (WAL, synchronous=NORMAL, BEGIN IMMEDIATE on SQLite)."""
    from storage.db import make_engine

    count = max(count, 1)
    engine = make_engine(url, pool_size=1)
    table = sa.Table(
        "bench_floor",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("to_status", sa.String(16), nullable=False),
        sa.Column("at", sa.DateTime, nullable=False),
    )
    table.create(engine)
    insert = sa.insert(table)
    row = {"run_id": uuid.uuid4().hex, "to_status": "succeeded", "at": datetime.now(UTC).replace(tzinfo=None)}
    with engine.begin() as conn:  # warm the pool and the statement cache
        conn.execute(insert, row)
    t0 = time.perf_counter()
    for _ in range(count):
        with engine.begin() as conn:
            conn.execute(insert, row)
    elapsed = time.perf_counter() - t0
    driver_s = _driver_floor(engine, count, row)
    table.drop(engine)
    engine.dispose()
    return {
        "writes": count,
        "floor_s": elapsed,
        "writes_per_s": count / elapsed,
        "us_per_write": elapsed / count * 1e6,
        "us_per_driver_write": driver_s / count * 1e6,
    }


def _driver_floor(engine: Engine, count: int, row: dict[str, Any]) -> float:
    """The same writes through the bare DB-API connection (no SQLAlchemy), for reference."""
    sqlite = engine.dialect.name == "sqlite"
    mark = "?" if sqlite else "%s"
    sql = f"INSERT INTO bench_floor (run_id, to_status, at) VALUES ({mark}, {mark}, {mark})"
    params = (row["run_id"], row["to_status"], row["at"].isoformat(" ") if sqlite else row["at"])
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        t0 = time.perf_counter()
        for _ in range(count):
            if sqlite:  # the store's connections run in autocommit mode and BEGIN IMMEDIATE themselves
                cursor.execute("BEGIN IMMEDIATE")
                cursor.execute(sql, params)
                cursor.execute("COMMIT")
            else:
                cursor.execute(sql, params)
                raw.commit()
        elapsed = time.perf_counter() - t0
        cursor.close()
    finally:
        raw.close()
    return elapsed


async def scenario_parked(url: str, work: Path, runs: int) -> dict:
    from bot.bootstrap import build
    from storage.migrate import upgrade

    gc.collect()
    rss_start = rss_mb()
    upgrade(url)
    shipyard = build(_settings(url, work, PARKED_PIPELINE, 0), with_runner=False, migrate=False)
    await shipyard.start()
    gc.collect()
    rss_ready = rss_mb()
    t0 = time.perf_counter()
    await _trigger(shipyard.orchestrator.handle, "parked", runs)
    elapsed = time.perf_counter() - t0
    gc.collect()
    rss_parked, rss_peak = rss_mb(), rss_mb("VmHWM")
    await shipyard.stop()
    watcher = reader(url)
    with watcher.connect() as conn:
        waiting = int(conn.exec_driver_sql("SELECT count(*) FROM run WHERE status = 'waiting'").scalar() or 0)
        gates = int(conn.exec_driver_sql("SELECT count(*) FROM gate WHERE status = 'open'").scalar() or 0)
    watcher.dispose()
    result = {
        "scenario": "parked",
        "runs": runs,
        "waiting": waiting,
        "open_gates": gates,
        "trigger_s": elapsed,
        "runs_per_s": runs / elapsed if elapsed else 0.0,
        "rss_start_mb": rss_start,
        "rss_ready_mb": rss_ready,
        "rss_parked_mb": rss_parked,
        "rss_peak_mb": rss_peak,
    }
    verdict = "PASS" if max(rss_parked, rss_peak) <= TARGET_RSS_MB and waiting == runs else "FAIL"
    print(
        f"  {waiting}/{runs} runs waiting at an open gate, triggered in {elapsed:.2f} s "
        f"({result['runs_per_s']:.0f} runs/s)\n"
        f"  RSS: {rss_start:.1f} MB after imports, {rss_ready:.1f} MB serving, {rss_parked:.1f} MB with "
        f"{runs} parked runs (peak {rss_peak:.1f} MB)  [{verdict}: target <= {TARGET_RSS_MB:.0f} MB]"
    )
    return result


async def scenario_idle(url: str, work: Path, seconds: float, capacity: int) -> dict:
    from bot.bootstrap import build
    from core.runtime.executor import SubprocessExecutor
    from storage.migrate import upgrade

    upgrade(url)
    shipyard = build(_settings(url, work, PIPELINE, capacity), executor=SubprocessExecutor(), migrate=False)
    counter = SqlCounter(
        shipyard.store.engine, by_text=True
    )  # before start: adding a listener races with its dispatch
    await shipyard.start()
    await asyncio.sleep(1.5)  # let start-up settle
    counter.reset()
    wall0, cpu0 = time.perf_counter(), cpu_seconds()
    await asyncio.sleep(seconds)
    cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
    transactions, statements = counter.transactions, counter.statements
    busiest, busiest_n = counter.texts.most_common(1)[0] if counter.texts else ("-", 0)
    counter.close()
    await shipyard.stop()
    result = {
        "scenario": "idle",
        "seconds": wall,
        "cpu_ms": cpu * 1000,
        "cpu_pct": cpu / wall * 100,
        "transactions": transactions,
        "statements": statements,
        "transactions_per_s": transactions / wall,
        "busiest_statement": _short_sql(busiest),
        "busiest_per_s": busiest_n / wall,
    }
    cpu_ok = result["cpu_pct"] <= TARGET_IDLE_CPU_PCT
    poll_ok = busiest_n <= wall + 1  # once a second, plus one for the phase of the window
    print(
        f"  {wall:.1f} s idle with the runner on: {cpu * 1000:.1f} ms CPU = "
        f"{result['cpu_pct']:.2f} % of one core "
        f"[{'PASS' if cpu_ok else 'FAIL'}: target <= {TARGET_IDLE_CPU_PCT} %]\n"
        f"  {transactions} transactions, {statements} statements ({transactions / wall:.1f} tx/s); "
        f"most frequent query {busiest_n}x ({busiest_n / wall:.2f}/s) "
        f"[{'PASS' if poll_ok else 'FAIL'}: nothing polls faster than 1/s]\n"
        f"    {_short_sql(busiest)}"
    )
    return result


def _short_sql(sql: str) -> str:
    """``SELECT job.id, ... FROM job WHERE ...``: enough to tell the pollers apart."""
    head, sep, tail = sql.partition(" FROM ")
    return (head[:30] + " ..." + sep + tail)[:150] if sep and len(head) > 30 else sql[:150]


def print_throughput(r: dict) -> None:
    ok_runs = r["statuses"].get("succeeded", 0)
    print(
        f"  engine: {r['runs']} runs ({ok_runs} succeeded) in {r['wall_s']:.2f} s "
        f"(all triggered after {r['trigger_s']:.2f} s, CPU {r['cpu_s']:.2f} s): "
        f"{r['runs_per_s']:.0f} runs/s, {r['transitions_per_s']:.0f} transitions/s, "
        f"{r['us_per_transition']:.0f} us/transition"
    )
    print(
        f"          {r['transitions']} transitions ({r['transitions'] / max(r['runs'], 1):.0f}/run), "
        f"{r['events']} events, {r['transactions']} transactions ({r['rollbacks']} rolled back), "
        f"{r['statements']} statements "
        f"({r['transitions'] / max(r['transactions'], 1):.2f} transitions/transaction, "
        f"{r['statements'] / max(r['transitions'], 1):.2f} statements/transition)"
    )
    print(
        f"  floor:  {r['writes']} single-row write transactions in {r['floor_s']:.2f} s: "
        f"{r['writes_per_s']:.0f} writes/s, {r['us_per_write']:.0f} us/write"
    )
    if r["scenario"] == "noop":
        verdict = f"[{'PASS' if r['ratio'] <= TARGET_RATIO else 'FAIL'}: target <= {TARGET_RATIO:.0f}x]"
    else:
        verdict = "(includes starting the `true` processes: no target)"
    print(
        f"  ratio:  {r['ratio']:.2f}x a raw write per transition {verdict}; "
        f"{r['us_per_transition'] / r['us_per_driver_write']:.1f}x a write through the bare DB-API driver "
        f"({r['us_per_driver_write']:.0f} us)"
    )
    if "machine_busy_s" in r:
        offered = r["cores"] * r["seen_s"]
        rest = r["machine_busy_s"] - r["cpu_s"] - r["spawner_cpu_s"]
        print(
            f"  CPU:    the machine was busy {r['machine_busy_s']:.2f} of {offered:.2f} CPU-s "
            f"({r['cores']} cores x {r['seen_s']:.2f} s): this process {r['cpu_s']:.2f}, "
            f"the spawner and its jobs {r['spawner_cpu_s']:.2f}, the database and the rest {rest:.2f}"
        )
    if r["scenario"] == "noop" and r["backend"] == "sqlite":
        verdict = "PASS" if r["runs_per_s"] >= TARGET_RUNS_PER_S else "FAIL"
        print(f"  runs/s: [{verdict}: target >= {TARGET_RUNS_PER_S:.0f} runs/s, no-op executor, SQLite]")
    if r["completed"] < r["runs"]:
        print(f"  WARNING: only {r['completed']} of {r['runs']} runs finished before the timeout")
    if r["profiled"]:
        print("  (profiled: the figures above include cProfile overhead)")


def child_main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING)
    scenario: str = args.child
    url: str = args.database_url
    profile = Path(args.profile_dir) if args.profile else None
    with tempfile.TemporaryDirectory(prefix="shipyard-bench-work-") as tmp:
        work = Path(tmp)
        if scenario in ("noop", "subprocess"):
            runs = args.runs if scenario == "noop" else args.subprocess_runs
            throughput = scenario_throughput(
                url, work, scenario, runs, args.capacity, profile, args.statements
            )
            result = asyncio.run(throughput)
        elif scenario == "parked":
            result = asyncio.run(scenario_parked(url, work, args.parked_runs))
        elif scenario == "idle":
            result = asyncio.run(scenario_idle(url, work, args.idle_seconds, args.capacity))
        else:
            raise SystemExit(f"unknown scenario {scenario!r}")
    print(RESULT_PREFIX + json.dumps(result, default=str), flush=True)


# -- the driver --------------------------------------------------------------------------------------


@dataclass
class Outcome:
    backend: str
    result: dict


def run_child(args: argparse.Namespace, scenario: str, url: str) -> dict | None:
    argv = [
        sys.executable,
        "-m",
        "bench.engine",
        "--child",
        scenario,
        "--database-url",
        url,
        "--runs",
        str(args.runs),
        "--subprocess-runs",
        str(args.subprocess_runs),
        "--parked-runs",
        str(args.parked_runs),
        "--idle-seconds",
        str(args.idle_seconds),
        "--capacity",
        str(args.capacity),
    ]
    if args.profile:
        argv += ["--profile", "--profile-dir", args.profile_dir]
    if args.statements:
        argv += ["--statements", str(args.statements)]
    result, code = child_result(argv, Path(__file__).resolve().parent.parent)
    if result is None:
        print(f"  ERROR: scenario {scenario} failed (exit code {code})")
    return result


def child_result(argv: list[str], cwd: Path) -> tuple[dict | None, int]:
    """Run a bench child process (this checkout first on its path), pass its output through,
    and return the result it printed after ``RESULT_PREFIX`` (None if it printed none or
    failed) with its exit code."""
    root = Path(__file__).resolve().parent.parent
    path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=cwd, env=env)
    assert proc.stdout is not None
    result = None
    for line in proc.stdout:
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line.removeprefix(RESULT_PREFIX))
        else:
            print(line, end="", flush=True)
    code = proc.wait()
    return (dict(result) if code == 0 and result is not None else None), code


def fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def summary_rows(outcomes: list[Outcome]) -> list[list[str]]:
    rows = []
    for o in outcomes:
        r = o.result
        if r["scenario"] in ("noop", "subprocess"):
            target = ""
            if r["scenario"] == "noop" and o.backend == "sqlite":
                target = "PASS" if r["runs_per_s"] >= TARGET_RUNS_PER_S else "FAIL"
                target = f"runs/s >= {TARGET_RUNS_PER_S:.0f}: {target}; "
            if r["scenario"] == "noop":
                target += f"ratio <= {TARGET_RATIO:.0f}x: {'PASS' if r['ratio'] <= TARGET_RATIO else 'FAIL'}"
            else:
                target = "(ratio includes process start-up)"
            rows.append(
                [
                    f"{r['scenario']} executor",
                    o.backend,
                    fmt(r["runs"]),
                    fmt(r["transitions"]),
                    fmt(r["wall_s"], 2),
                    fmt(r["runs_per_s"]),
                    fmt(r["transitions_per_s"]),
                    fmt(r["us_per_transition"]),
                    fmt(r["us_per_write"]),
                    f"{r['ratio']:.2f}x",
                    target,
                ]
            )
        elif r["scenario"] == "parked":
            peak = max(r["rss_parked_mb"], r["rss_peak_mb"])
            verdict = "PASS" if peak <= TARGET_RSS_MB and r["waiting"] == r["runs"] else "FAIL"
            rows.append(
                [
                    "parked at a gate",
                    o.backend,
                    fmt(r["runs"]),
                    "",
                    fmt(r["trigger_s"], 2),
                    fmt(r["runs_per_s"]),
                    "",
                    "",
                    "",
                    "",
                    f"RSS {r['rss_parked_mb']:.0f} MB (peak {r['rss_peak_mb']:.0f}) "
                    f"<= {TARGET_RSS_MB:.0f} MB: {verdict}",
                ]
            )
        elif r["scenario"] == "idle":
            cpu_ok = r["cpu_pct"] <= TARGET_IDLE_CPU_PCT
            poll_ok = r["busiest_per_s"] * r["seconds"] <= r["seconds"] + 1
            rows.append(
                [
                    "idle server + runner",
                    o.backend,
                    "",
                    "",
                    fmt(r["seconds"], 1),
                    "",
                    "",
                    "",
                    "",
                    "",
                    f"CPU {r['cpu_pct']:.2f} % ({r['cpu_ms']:.0f} ms): {'PASS' if cpu_ok else 'FAIL'}; "
                    f"{r['transactions_per_s']:.1f} tx/s, most frequent query {r['busiest_per_s']:.2f}/s: "
                    f"{'PASS' if poll_ok else 'FAIL'}",
                ]
            )
    return rows


HEADER = [
    "scenario",
    "db",
    "runs",
    "transitions",
    "wall s",
    "runs/s",
    "transitions/s",
    "us/transition",
    "raw us/write",
    "engine/raw",
    "targets",
]


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADER[:-1])]
    print("  ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=False)) + "  " + HEADER[-1])
    for row in rows:
        pairs = enumerate(zip(row, widths, strict=False))
        cells = [c.rjust(w) if i >= 2 else c.ljust(w) for i, (c, w) in pairs]
        print("  ".join(cells) + "  " + row[-1])


def print_markdown(rows: list[list[str]], command: str, machine: str, capacity: int) -> None:
    print(f"Measured with `{command}` (built-in runner capacity {capacity}) on {machine}.\n")
    print("| " + " | ".join(h.replace("us/", "µs/") for h in HEADER) + " |")
    print("|" + "|".join(["---"] * 2 + ["---:"] * (len(HEADER) - 3) + ["---"]) + "|")
    for row in rows:
        print("| " + " | ".join(c.replace("us/", "µs/") for c in row) + " |")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.engine", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=500, help="runs per no-op scenario (default 500)")
    parser.add_argument(
        "--subprocess-runs",
        type=int,
        default=None,
        help="runs per subprocess scenario (default min(100, --runs))",
    )
    parser.add_argument("--parked-runs", type=int, default=1000, help="runs parked at a gate (default 1000)")
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="idle window (default 5 s)")
    parser.add_argument(
        "--capacity", type=int, default=16, help="jobs the built-in runner runs at once (default 16)"
    )
    parser.add_argument("--backends", default="sqlite,postgres", help="comma-separated: sqlite,postgres")
    parser.add_argument("--executors", default="noop,subprocess", help="comma-separated: noop,subprocess")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("SHIPYARD_BENCH_POSTGRES_URL")
        or os.environ.get("SHIPYARD_TEST_POSTGRES_URL")
        or DEFAULT_PG_URL,
        help="a database to connect to for CREATE/DROP DATABASE bench_* (default %(default)s)",
    )
    parser.add_argument("--no-parked", action="store_true", help="skip the parked-runs memory scenario")
    parser.add_argument("--no-idle", action="store_true", help="skip the idle-CPU scenario")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the throughput scenarios (slows them down ~2x)"
    )
    parser.add_argument(
        "--profile-dir",
        default=str(Path(tempfile.gettempdir()) / "shipyard-bench-profiles"),
        help="where --profile saves <db>-<executor>-{loop,db}.prof (default %(default)s)",
    )
    parser.add_argument(
        "--statements", type=int, default=0, metavar="K", help="list the K most frequent SQL statements"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="K",
        help="run each throughput scenario K times, report the median",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    return parser


def _backends(
    parser: argparse.ArgumentParser, args: argparse.Namespace, pg_url: str
) -> tuple[list[str], list[str], str]:
    """The backends and executors asked for (PostgreSQL dropped when it does not answer) and
    the machine line that heads the report."""
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    executors = [e.strip() for e in args.executors.split(",") if e.strip()]
    unknown = set(backends) - {"sqlite", "postgres"} | set(executors) - {"noop", "subprocess"}
    if unknown:
        parser.error(f"unknown backend/executor: {', '.join(sorted(unknown))}")
    versions = {"sqlite": f"SQLite {sqlite3.sqlite_version}"}
    if "postgres" in backends:
        version = pg_version(pg_url)
        if version is None:
            backends.remove("postgres")
        else:
            versions["postgres"] = f"PostgreSQL {version.split()[0]}"
    machine = (
        f"{cpu_model()}, nproc {nproc()}, Python {platform.python_version()}, "
        f"SQLAlchemy {sa.__version__}, " + ", ".join(versions[b] for b in backends or ["sqlite"])
    )
    return backends, executors, machine


def _run_scenario(
    args: argparse.Namespace,
    pg_url: str,
    tmp: Path,
    outcomes: list[Outcome],
    backend: str,
    name: str,
    title: str,
    repeat: int = 1,
) -> None:
    """Run one scenario ``repeat`` times, each in a fresh database, and keep the median by
    throughput in ``outcomes``."""
    results = []
    for attempt in range(1, repeat + 1):
        print(f"== {title} on {backend}" + (f" (repeat {attempt}/{repeat})" if repeat > 1 else ""))
        with fresh_database(backend, pg_url, tmp) as url:
            result = run_child(args, name, url)
        if result is not None:
            results.append(result)
        print()
    if not results:
        return
    results.sort(key=lambda r: float(r.get("runs_per_s", 0.0)))
    median = results[(len(results) - 1) // 2]
    if len(results) > 1:
        spread = ", ".join(f"{r['runs_per_s']:.0f}" for r in results)
        print(f"   median of {len(results)}: {median['runs_per_s']:.0f} runs/s (all: {spread})\n")
        median["repeats"] = [r["runs_per_s"] for r in results]
    outcomes.append(Outcome(backend, median))


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.subprocess_runs is None:
        args.subprocess_runs = min(100, args.runs)
    if args.child:
        child_main(args)
        return

    command = "python -m bench.engine" + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")
    pg_url = normalize_pg_url(args.postgres_url)
    backends, executors, machine = _backends(parser, args, pg_url)
    print(f"{command}\n{machine}\n")

    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="shipyard-bench-") as tmpdir:
        scenario = functools.partial(_run_scenario, args, pg_url, Path(tmpdir), outcomes)
        for backend in backends:
            for executor in executors:
                runs = args.runs if executor == "noop" else args.subprocess_runs
                what = "no-op executor" if executor == "noop" else "`true` subprocesses"
                title = f"{runs} runs x 3 stages x 2 jobs, {what}, capacity {args.capacity}"
                scenario(backend, executor, title, max(args.repeat, 1))
        if not args.no_parked:
            for backend in backends:
                scenario(backend, "parked", f"{args.parked_runs} runs parked at a manual gate")
        if not args.no_idle:
            scenario("sqlite", "idle", f"idle server with its runner for {args.idle_seconds:.0f} s")

    rows = summary_rows(outcomes)
    if not rows:
        return
    print("== summary")
    print_table(rows)
    print("\n== for docs/benchmarks.md\n")
    print_markdown(rows, command, machine, args.capacity)


if __name__ == "__main__":
    main()
