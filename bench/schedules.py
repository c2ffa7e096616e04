"""Schedules benchmark: start-up, memory and fire lateness of the real service with 10,000 schedules.

A fresh database (a SQLite file in a temporary directory, or with ``--database-url`` a fresh
``bench_sched_<random>`` PostgreSQL database, created and dropped through the database the URL
names, which is otherwise untouched) is migrated and loaded with ``--schedules`` schedules:

  file     ``--file-schedules`` declared in the files of ``--pipelines`` pipelines (one stage, one
           ``true`` job each); the service stores them when it starts, so they are part of start-up
  burst    ``--burst`` people's schedules (owned by 20 principals holding ``deployer``) all due at
           the same whole second T, about ``--lead`` seconds after the service is started
  spread   ``--spread`` more, due one whole second apart over the ``--spread-seconds`` around T
  idle     the rest: daily crons in several time zones, none due within the next 15 minutes

Due times are set on the stored schedules (the state in which a schedule's next occurrence has
come), so no real cron minute is waited for; every cron used is a daily one whose following
occurrence is hours away, so each due schedule fires exactly once in the window.

A child process (clean memory figures) then starts the service as ``shipyard serve`` does:
``bot.app.create_app(settings)`` serving on a loopback port, with the built-in runner and a no-op
executor (``--runner noop``, the default: runs are created, claimed and finished, so the database
thread carries the runs' own transitions too), no runner (``off``) or real ``true`` processes
(``subprocess``). Slack is off. Measured:

  start-up   from spawning the child process (interpreter and imports included), and from
             ``create_app``, to the app serving HTTP with its clock started (``/readyz`` answered
             200): migrations checked, pipelines registered, file schedules stored; the clock's
             first tick follows at the next whole second
  RSS        ``VmRSS`` of the child (``/proc/self/status``) after its imports, when serving, after
             the window; ``VmHWM`` (the peak); growth is the peak over the after-imports figure
  lateness   for every due occurrence, from its due time to its run's ``created_at`` (the clock
             of the transaction that inserted it), p50 / p99 / max, read from the database after
             the window. The APScheduler tick runs on the real wall clock: nothing calls
             ``tick(at)``. Every occurrence must have made exactly one run (checked by its
             idempotency key ``schedule:<id>:<fire time>``).

Also printed: runs created per second, the service's CPU time per fire (all its threads: the
scheduler, the engine, the runner) and the machine's load average, since on a shared machine
other work shows in every wall-clock figure.

    python -m bench.schedules                              # 10,000 schedules, 1,000 due at once
    python -m bench.schedules --burst 2000 --runner off
    python -m bench.schedules --database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres

Targets (issue 5): start-up <= 5 s, RSS growth <= 100 MB, fire lateness p99 <= 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import platform
import random
import shlex
import sqlite3
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.api import fresh_database, percentile
from bench.engine import RESULT_PREFIX, child_result, cpu_model, cpu_seconds, nproc, rss_mb

TARGET_STARTUP_S = 5.0
TARGET_RSS_GROWTH_MB = 100.0
TARGET_P99_S = 1.0
ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Sydney")
OWNERS = tuple(f"owner-{i:02}" for i in range(20))
IDLE_GAP = timedelta(minutes=15)


# -- the database ----------------------------------------------------------------------------------


def pipeline_text(name: str, crons: list[tuple[str, str]]) -> str:
    triggers = "".join(f"  - schedule: {{cron: '{c}', timezone: {tz}}}\n" for c, tz in crons)
    return (
        f"name: {name}\n"
        + ("triggers:\n" + triggers if crons else "")
        + "stages:\n  - name: ship\n    jobs: [{name: go, run: ['true']}]\n"
    )


def quiet_cron(rng: random.Random, tz: str, now: datetime) -> tuple[str, datetime]:
    """A daily cron in ``tz`` whose next occurrence is more than ``IDLE_GAP`` away, and that
    occurrence."""
    from core.schedule import next_fire

    while True:
        cron = f"{rng.randrange(60)} {rng.randrange(24)} * * *"
        fire = next_fire(cron, tz, now)
        if fire - now > IDLE_GAP:
            return cron, fire


@dataclass
class Plan:
    url: str
    pipelines_dir: Path
    due: dict[str, datetime]  #: schedule id -> the occurrence due in the window
    burst_at: datetime
    counts: dict[str, int]
    seed_s: float


def prepare(args: argparse.Namespace, url: str, tmp: Path) -> Plan:
    """Migrate, write the pipeline files, store the people's schedules and grant their owners."""
    from core.access import Role
    from core.schedule import Schedule, next_fire
    from storage.directory import Directory
    from storage.migrate import upgrade
    from storage.schedules import SCHEDULE, ScheduleStore
    from storage.store import SqlStore

    t0 = time.perf_counter()
    rng = random.Random(5)
    now = datetime.now(UTC)
    upgrade(url)
    pipelines = tmp / "pipelines"
    pipelines.mkdir()
    names = [f"p{i:03}" for i in range(args.pipelines)]
    per_file = [
        args.file_schedules // len(names) + (i < args.file_schedules % len(names)) for i in range(len(names))
    ]
    for name, count in zip(names, per_file, strict=True):
        crons: list[tuple[str, str]] = []
        while len(crons) < count:
            tz = ZONES[len(crons) % len(ZONES)]
            cron, _ = quiet_cron(rng, tz, now)
            if (cron, tz) not in crons:
                crons.append((cron, tz))
        (pipelines / f"{name}.yml").write_text(pipeline_text(name, crons))

    people = args.schedules - args.file_schedules
    schedules, offsets = [], {}
    shared: dict[str, str] = {}  # the burst shares a few crons, as nightly deploys do
    for i in range(people):
        tz = ZONES[i % len(ZONES)]
        if i < args.burst:
            cron = shared.get(tz) or shared.setdefault(tz, quiet_cron(rng, tz, now)[0])
            offsets[i] = 0
        else:
            cron = quiet_cron(rng, tz, now)[0]
            if i < args.burst + args.spread:
                offsets[i] = i % max(args.spread_seconds, 1) - args.spread_seconds // 2
        schedule = Schedule(
            id=uuid.uuid4().hex,
            pipeline=names[i % len(names)],
            cron=cron,
            timezone=tz,
            parameters={},
            owner=OWNERS[i % len(OWNERS)],
            source="api",
            grace_s=3600.0,
            next_fire_at=next_fire(cron, tz, now),
            created_at=now,
        )
        schedules.append(schedule)
    store = SqlStore(url)
    try:
        schedule_store = ScheduleStore(store)
        for i in range(0, len(schedules), 1000):
            schedule_store.add_many(schedules[i : i + 1000])
        directory = Directory(store)
        for owner in OWNERS:
            directory.grant(owner, "role", str(Role.DEPLOYER), now)
        # the due times last, just before the service starts: loading does not eat into the lead
        burst_at = datetime.fromtimestamp(math.ceil(time.time() + args.lead), UTC)
        due = {schedules[i].id: burst_at + timedelta(seconds=k) for i, k in offsets.items()}
        with store.engine.begin() as conn:
            for k in sorted(set(offsets.values())):
                ids = [schedules[i].id for i, o in offsets.items() if o == k]
                for j in range(0, len(ids), 500):
                    conn.execute(
                        sa.update(SCHEDULE)
                        .where(SCHEDULE.c.id.in_(ids[j : j + 500]))
                        .values(next_fire_at=burst_at + timedelta(seconds=k))
                    )
    finally:
        store.dispose()
    counts = {
        "file": args.file_schedules,
        "burst": min(args.burst, people),
        "spread": max(0, min(args.spread, people - args.burst)),
    }
    counts["idle"] = people - counts["burst"] - counts["spread"]
    return Plan(url, pipelines, due, burst_at, counts, time.perf_counter() - t0)


# -- the child: the service ------------------------------------------------------------------------


def child(args: argparse.Namespace) -> None:
    """Start the service, wait until every due occurrence has its run, report."""
    import bot.app  # noqa: F401  (imports first: the after-imports RSS includes them)

    gc.collect()
    rss_imports = rss_mb()
    result = asyncio.run(serve_and_watch(args, rss_imports))
    print(RESULT_PREFIX + json.dumps(result), flush=True)


async def serve_and_watch(args: argparse.Namespace, rss_imports: float) -> dict[str, Any]:
    import logging

    from aiohttp import web

    from bot.app import create_app
    from bot.bootstrap import build
    from bot.config import Settings
    from core.runtime.executor import NoopExecutor, SubprocessExecutor

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    skipped = 0

    def count_skips(record: logging.LogRecord) -> bool:
        nonlocal skipped
        if "maximum number of running instances" in record.getMessage():
            skipped += 1
            return False
        return True

    logging.getLogger("apscheduler.executors.default").addFilter(count_skips)
    logging.getLogger("apscheduler.scheduler").addFilter(count_skips)
    work = Path(args.work)
    settings = Settings(
        database_url=args.database_url,
        pipelines_dir=work / "pipelines",
        work_dir=work / "work",
        runner_name="bench-runner",
        runner_capacity=0 if args.runner == "off" else args.capacity,
        log_level="WARNING",
    )
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    executor = SubprocessExecutor() if args.runner == "subprocess" else NoopExecutor()
    app = create_app(settings, build(settings, executor=executor))
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()  # cleanup_ctx: database, engine, runner, clock (file schedules stored)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    status = await asyncio.to_thread(_get_status, f"http://127.0.0.1:{port}/readyz")
    startup_app = time.perf_counter() - t0
    startup_process = time.time() - args.spawned_at
    startup_cpu = cpu_seconds() - cpu0
    ready_at = time.time()
    gc.collect()
    rss_ready = rss_mb()

    expected = args.expect
    deadline = time.monotonic() + args.lead + args.spread_seconds + args.timeout
    watcher = sa.create_engine(args.database_url, poolclass=sa.pool.NullPool)
    count_runs = sa.text("SELECT count(*) FROM run WHERE idempotency_key LIKE 'schedule:%'")

    def scheduled_runs() -> int:
        with watcher.connect() as conn:
            return int(conn.execute(count_runs).scalar() or 0)

    cpu1 = cpu_seconds()
    seen = 0
    while time.monotonic() < deadline:
        seen = await asyncio.to_thread(scheduled_runs)
        if seen >= expected:
            break
        await asyncio.sleep(0.25)
    await asyncio.sleep(1.5)  # a tick or two more: an occurrence fired twice would show now
    window_cpu = cpu_seconds() - cpu1
    gc.collect()
    rss_after, rss_peak = rss_mb(), rss_mb("VmHWM")
    await runner.cleanup()

    from storage.tables import T

    run = T["run"]
    query = sa.select(run.c.idempotency_key, run.c.created_at, run.c.status).where(
        run.c.idempotency_key.like("schedule:%")
    )
    with watcher.connect() as conn:
        rows = conn.execute(query).all()
        schedules_left = int(
            conn.execute(sa.text("SELECT count(*) FROM schedule WHERE deleted_at IS NULL")).scalar() or 0
        )
    watcher.dispose()
    return {
        "readyz": status,
        "ready_at": ready_at,
        "ticks_skipped": skipped,
        "startup_app_s": startup_app,
        "startup_process_s": startup_process,
        "startup_cpu_s": startup_cpu,
        "rss_imports_mb": rss_imports,
        "rss_ready_mb": rss_ready,
        "rss_after_mb": rss_after,
        "rss_peak_mb": rss_peak,
        "window_cpu_s": window_cpu,
        "schedules_stored": schedules_left,
        "runs": [[key, created.isoformat(), st] for key, created, st in rows],
    }


def _get_status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as response:
        return int(response.status)


def run_child(args: argparse.Namespace, plan: Plan, tmp: Path) -> dict[str, Any]:
    argv = [
        sys.executable,
        "-m",
        "bench.schedules",
        "--child",
        "--database-url",
        plan.url,
        "--work",
        str(tmp),
        "--expect",
        str(len(plan.due)),
        "--runner",
        args.runner,
        "--capacity",
        str(args.capacity),
        "--lead",
        str(args.lead),
        "--spread-seconds",
        str(args.spread_seconds),
        "--timeout",
        str(args.timeout),
    ]
    argv += ["--spawned-at", repr(time.time())]
    result, code = child_result(argv, tmp)
    if result is None:
        raise SystemExit(f"the service process failed (exit code {code})")
    return result


# -- the figures -----------------------------------------------------------------------------------


@dataclass
class Fires:
    lateness: list[float]  #: seconds, sorted
    missing: int
    unexpected: int
    duplicates: int
    per_second: Counter[int]  #: runs created per whole second after the burst's due time
    statuses: Counter[str]


def fires(plan: Plan, runs: list[list[str]]) -> Fires:
    late, seen, unexpected = [], Counter[str](), 0
    per_second: Counter[int] = Counter()
    statuses: Counter[str] = Counter()
    for key, created_text, status in runs:
        _, schedule_id, fire_text = key.split(":", 2)
        fire, created = datetime.fromisoformat(fire_text), datetime.fromisoformat(created_text)
        seen[schedule_id] += 1
        statuses[status] += 1
        if plan.due.get(schedule_id) != fire:
            unexpected += 1
            continue
        late.append((created - fire).total_seconds())
        per_second[math.floor((created - plan.burst_at).total_seconds())] += 1
    missing = sum(1 for s in plan.due if s not in seen)
    duplicates = sum(n - 1 for n in seen.values() if n > 1)
    return Fires(sorted(late), missing, unexpected, duplicates, per_second, statuses)


def load_average() -> str:
    """The machine's 1-minute load average: other work on a shared machine shows here."""
    with contextlib.suppress(OSError):
        return Path("/proc/loadavg").read_text().split()[0]
    return "?"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(args: argparse.Namespace, plan: Plan, r: dict[str, Any], backend: str) -> bool:
    f = fires(plan, r["runs"])
    p50, p99, worst = (percentile(f.lateness, q) for q in (50, 99, 100))
    growth = max(r["rss_after_mb"], r["rss_peak_mb"]) - r["rss_imports_mb"]
    exact = f.missing == 0 and f.unexpected == 0 and f.duplicates == 0
    ok_start = r["startup_process_s"] <= TARGET_STARTUP_S and r["readyz"] == 200
    ok_rss = growth <= TARGET_RSS_GROWTH_MB
    ok_late = p99 <= TARGET_P99_S and exact
    second = " ".join(f"{k:+d}s:{n}" for k, n in sorted(f.per_second.items()))
    ahead = plan.burst_at.timestamp() - r["ready_at"]
    print(
        f"  the service was ready {abs(ahead):.1f} s {'before' if ahead >= 0 else 'AFTER'} T "
        f"(the burst's due time); clock ticks skipped (the previous one still running): {r['ticks_skipped']}"
    )
    print(f"  runs created per second after T: {second}")
    print(
        f"  occurrences due {len(plan.due):,}; runs {len(f.lateness):,}; missing {f.missing}; "
        f"unexpected {f.unexpected}; duplicates {f.duplicates}; run states "
        + ", ".join(f"{k} {n}" for k, n in sorted(f.statuses.items()))
    )
    per_fire = 1000 * r["window_cpu_s"] / max(len(f.lateness), 1)
    print(
        f"  service CPU: start-up {r['startup_cpu_s']:.1f} s, window {r['window_cpu_s']:.1f} s "
        f"({per_fire:.2f} ms per fire, all threads); {r['schedules_stored']:,} live schedules stored"
    )
    print(f"  machine load average (1 min) before / after: {r['load_before']} / {r['load_after']}\n")
    c = plan.counts
    rows = [
        [
            "start-up (process start -> serving, clock on)",
            f"{r['startup_process_s']:.2f} s",
            f"create_app -> serving {r['startup_app_s']:.2f} s",
            f"<= {TARGET_STARTUP_S:.0f} s: {verdict(ok_start)}",
        ],
        [
            "RSS growth (peak - after imports)",
            f"{growth:.0f} MB",
            f"imports {r['rss_imports_mb']:.0f}, serving {r['rss_ready_mb']:.0f}, "
            f"after {r['rss_after_mb']:.0f}, peak {r['rss_peak_mb']:.0f} MB",
            f"<= {TARGET_RSS_GROWTH_MB:.0f} MB: {verdict(ok_rss)}",
        ],
        [
            f"fire lateness, {len(f.lateness):,} fires ({c['burst']:,} at one second)",
            f"p99 {p99:.3f} s",
            f"min {f.lateness[0] if f.lateness else math.nan:.3f} s, p50 {p50:.3f} s, max {worst:.3f} s",
            f"p99 <= {TARGET_P99_S:.0f} s, each once: {verdict(ok_late)}",
        ],
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    print(
        f"== summary ({backend}; {args.schedules:,} schedules: {c['file']:,} in files, {c['burst']:,} burst, "
        f"{c['spread']:,} spread, {c['idle']:,} idle; runner {args.runner})"
    )
    for row in rows:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[3])
    return ok_start and ok_rss and ok_late


# -- main ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.schedules", description=__doc__.split("\n\n")[0])
    parser.add_argument("--schedules", type=int, default=10_000, help="schedules in all (10,000)")
    parser.add_argument("--file-schedules", type=int, default=1_000, help="of them declared in files (1,000)")
    parser.add_argument("--pipelines", type=int, default=50, help="pipelines they are spread over (50)")
    parser.add_argument(
        "--burst", type=int, default=1_000, help="people's schedules due at one second (1,000)"
    )
    parser.add_argument("--spread", type=int, default=1_000, help="more due around it, 1 s apart (1,000)")
    parser.add_argument("--spread-seconds", type=int, default=5, help="seconds the spread covers (5)")
    parser.add_argument("--lead", type=float, default=12.0, help="seconds from loading to the burst (12)")
    parser.add_argument(
        "--runner",
        choices=("noop", "off", "subprocess"),
        default="noop",
        help="built-in runner: no-op executor (default), none, or real `true` processes",
    )
    parser.add_argument("--capacity", type=int, default=4, help="runner capacity (4, the default setting)")
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="give up this long after the window (60 s)"
    )
    parser.add_argument(
        "--database-url",
        help="a PostgreSQL server (postgresql+psycopg://user@host:port/db): the bench creates and drops a "
        "bench_sched_<random> database there, through the database named (default: SQLite)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--expect", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--spawned-at", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return
    if not 0 <= args.file_schedules <= args.schedules or args.pipelines < 1:
        parser.error("--file-schedules must be between 0 and --schedules; --pipelines at least 1")

    command = "python -m bench.schedules" + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")
    backend = "PostgreSQL" if args.database_url else f"SQLite {sqlite3.sqlite_version}"
    print(command)
    print(
        f"{cpu_model()}, nproc {nproc()}, Python {platform.python_version()}, "
        f"SQLAlchemy {sa.__version__}, {backend}\n"
    )
    t_all = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="shipyard-bench-sched-"))
    ok = False
    try:
        with fresh_database(args.database_url, tmp, prefix="sched") as url:
            plan = prepare(args, url, tmp)
            c = plan.counts
            print(
                f"== loaded {args.schedules:,} schedules in {plan.seed_s:.1f} s: {c['file']:,} in "
                f"{args.pipelines} pipeline files (stored by the service at start-up), {c['burst']:,} due at "
                f"T = {plan.burst_at:%H:%M:%S}, {c['spread']:,} due over the {args.spread_seconds} s around "
                f"it, {c['idle']:,} due later"
            )
            print(f"== starting the service (runner: {args.runner})")
            load_before = load_average()
            result = run_child(args, plan, tmp)
            result.update(load_before=load_before, load_after=load_average())
            ok = report(args, plan, result, backend)
    finally:
        if args.keep:
            print(f"(kept {tmp})")
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\ntotal {time.perf_counter() - t_all:.1f} s")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
