"""Environment health benchmark: the CPU a real ``shipyard serve`` spends watching many
environments' checks, and how late its measurements are.

Small test services (aiohttp, in a child process of their own, ``--services`` loopback ports,
each answering ``/e/<n>/healthz`` and ``/e/<n>/status`` for every environment) stand in for the
environments' services. A service configuration (``SHIPYARD_CONFIG``) declares ``--environments``
environments, each with ``--checks`` http checks, all in its ``health`` and measured every
``--interval``; the kinds take turns:

  smoke   GET /e/<n>/healthz, status 200
  ready   GET /e/<n>/status, json_path checks.db.ok, condition == true
  fast    GET /e/<n>/healthz, status 200, max_latency 500ms

``shipyard serve`` runs as a subprocess (``bench.api.Server``: a fresh SQLite file, or a fresh
database on ``--database-url``; runner off) and measures them over loopback. After
``--warmup`` seconds the bench measures for ``--seconds``:

  CPU        the server process's user + system time (``/proc/<pid>/stat``, all its threads)
             over the window, as a percentage of one core
  lateness   read back from the database after the server has stopped. A health watch's checks
             are first due at their spot within the interval after the analysis starts
             (``analysis.started_at + core.analysis.spread(...)``) and then every interval after
             that *due* time (``core.runtime.analyses.next_due``), so the k-th occurrence of a
             check is due at ``started_at + spread + k * interval``; a measurement's
             lateness is its ``at`` (when it started) minus the due time of the occurrence it
             belongs to. Occurrences due in the window that got no measurement (skipped because
             the check was more than an interval late) are counted as missed. Beside it, the
             spacing jitter between consecutive measurements of one check
             (``|at[i] - at[i-1] - interval|``), which needs no due time at all
  rate       measurements whose occurrence was due in the window, per second, against the
             expected ``environments * checks / interval``; their results (all services answer
             well, so anything but ``passed`` is an error of the measuring side)

    python -m bench.health                         # 200 environments x 3 checks every 10 s, 60 s
    python -m bench.health --seconds 20 --warmup 5
    python -m bench.health --database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres
    python -m bench.health --profile               # cProfile of the server's main thread

Targets (issue 13): the server's CPU below 10 % of a core; measurement lateness p99 <= 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import pstats
import shlex
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import sqlalchemy as sa
import yaml

from bench.api import ROOT, Server, cpu_model, fresh_database, nproc, percentile, process_cpu
from core.analysis import spread

TARGET_CPU_PCT = 10.0
TARGET_P99_S = 1.0
KINDS = ("smoke", "ready", "fast")
STATUS_BODY = {"status": "ok", "checks": {"db": {"ok": True}}}


# -- the services ----------------------------------------------------------------------------------


async def serve_services(ports: int) -> None:
    """Serve ``/e/{n}/healthz`` and ``/e/{n}/status`` on ``ports`` free loopback ports; print
    ``READY <port>,<port>...`` when listening, then serve until stdin closes."""
    from aiohttp import web

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def status(request: web.Request) -> web.Response:
        return web.json_response(STATUS_BODY)

    app = web.Application()
    app.router.add_get("/e/{n}/healthz", healthz)
    app.router.add_get("/e/{n}/status", status)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    bound = []
    for _ in range(ports):
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        bound.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    print("READY " + ",".join(map(str, bound)), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # the bench closes our stdin to stop us
    await runner.cleanup()


class Services:
    """The test services in a child process (so the bench's own work never delays them)."""

    def __init__(self, ports: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.health", "--serve-services", str(ports)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("READY "):
            raise SystemExit(f"the test services did not start: {line!r}")
        self.ports = [int(p) for p in line.split()[1].split(",")]

    def cpu(self) -> float:
        return process_cpu(self.proc.pid)

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- the configuration -----------------------------------------------------------------------------


def check_name(k: int) -> str:
    kind = KINDS[k % len(KINDS)]
    return kind if k < len(KINDS) else f"{kind}-{k // len(KINDS)}"


def check_def(k: int, base: str, interval: float) -> dict[str, Any]:
    kind = KINDS[k % len(KINDS)]
    if kind == "smoke":
        http: dict[str, Any] = {"url": f"{base}/healthz", "status": 200}
    elif kind == "ready":
        http = {"url": f"{base}/status", "json_path": "checks.db.ok", "condition": "== true"}
    else:
        http = {"url": f"{base}/healthz", "status": 200, "max_latency": "500ms"}
    return {"http": http, "interval": f"{interval:g}s", "timeout": f"{min(interval, 5.0):g}s"}


def environment_name(i: int) -> str:
    return f"env-{i:04}"


def config(environments: int, checks: int, interval: float, ports: list[int]) -> dict[str, Any]:
    """The service configuration: every environment's checks, all watched."""
    envs: dict[str, Any] = {}
    for i in range(environments):
        base = f"http://127.0.0.1:{ports[i % len(ports)]}/e/{i}"
        names = [check_name(k) for k in range(checks)]
        envs[environment_name(i)] = {
            "checks": {name: check_def(k, base, interval) for k, name in enumerate(names)},
            "health": names,
        }
    return {"environments": envs}


# -- the figures -----------------------------------------------------------------------------------


@dataclass
class Figures:
    due: int  #: occurrences due in the window
    measured: int  #: of those, measured
    missed: int  #: of those, skipped (no measurement)
    extra: int  #: measurements of an occurrence measured already
    lateness: list[float]  #: seconds, sorted
    jitter: list[float]  #: seconds, sorted
    results: Counter[str]
    details: Counter[str]  #: of what did not pass, the commonest details


def figures(url: str, interval: float, checks: int, w0: datetime, w1: datetime) -> Figures:
    """Lateness and counts of the occurrences due in ``[w0, w1)`` of each health watch's
    ``checks`` checks, read from the database."""
    from storage.tables import metadata

    analysis, measurement = metadata.tables["analysis"], metadata.tables["measurement"]
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            started = {
                r.id: r.started_at
                for r in conn.execute(
                    sa.select(analysis.c.id, analysis.c.started_at).where(analysis.c.kind == "health")
                )
            }
            m = measurement.c
            rows = conn.execute(
                sa.select(m.analysis_id, m.check, m.at, m.result, m.detail)
                .where(m.at >= w0 - timedelta(seconds=interval))
                .order_by(m.analysis_id, m.check, m.at)
            ).all()
    finally:
        engine.dispose()
    step = timedelta(seconds=interval)
    seen: dict[tuple[str, str], set[int]] = defaultdict(set)
    last: dict[tuple[str, str], datetime] = {}
    late, jitter, extra = [], [], 0
    results: Counter[str] = Counter()
    details: Counter[str] = Counter()
    for aid, check, at, result, detail in rows:
        # (each check's first due time is spread within its interval: ``core.analysis.spread``)
        offset = timedelta(seconds=spread(aid.removeprefix("health:"), check, interval))
        start, key = started[aid] + offset, (aid, check)
        k = math.floor((at - start) / step)
        due = start + k * step
        if key in last and w0 <= at < w1:
            jitter.append(abs((at - last[key]).total_seconds() - interval))
        last[key] = at
        if not w0 <= due < w1:
            continue
        if k in seen[key]:
            extra += 1
            continue
        seen[key].add(k)
        late.append((at - due).total_seconds())
        results[result] += 1
        if result != "passed":
            details[detail[:100]] += 1
    due_count = 0
    names = {c for _, c in last} or {f"check-{i}" for i in range(checks)}
    for aid, begun in started.items():
        for check in names:
            start = begun + timedelta(seconds=spread(aid.removeprefix("health:"), check, interval))
            first = max(0, math.ceil((w0 - start) / step))
            last_k = math.ceil((w1 - start) / step) - 1  # the last k with start + k*step < w1
            due_count += max(0, last_k - first + 1)
    measured = len(late)
    return Figures(
        due=due_count,
        measured=measured,
        missed=max(0, due_count - measured),
        extra=extra,
        lateness=sorted(late),
        jitter=sorted(jitter),
        results=results,
        details=details,
    )


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# -- running it ------------------------------------------------------------------------------------


class ProfiledServer(Server):
    """``shipyard serve`` under cProfile (its main thread: the event loop, where the checks are
    measured and their results handled; the database thread's work shows as waits there)."""

    def __init__(self, *args: Any, profile_to: Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.profile_to = profile_to

    def command(self) -> list[str]:
        return [sys.executable, "-m", "cProfile", "-o", str(self.profile_to), "-m", "bot.cli", "serve"]


def wait_for_first_round(url: str, expected: int, timeout: float) -> float:
    """Seconds until every check has been measured once (the server is measuring)."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < timeout:
            try:
                with engine.connect() as conn:
                    n = conn.execute(
                        sa.text("SELECT count(*) FROM analysis_check WHERE measured > 0")
                    ).scalar_one()
                if n >= expected:
                    return time.monotonic() - t0
            except sa.exc.OperationalError:
                pass
            time.sleep(0.2)
    finally:
        engine.dispose()
    raise SystemExit(f"the server measured fewer than {expected} checks within {timeout:.0f} s")


def fmt_s(values: list[float], q: float) -> str:
    return f"{percentile(values, q):.3f} s" if values else "-"


def main(argv: list[str] | None = None) -> None:
    from core.duration import parse_duration

    parser = argparse.ArgumentParser(prog="python -m bench.health", description=__doc__.split("\n\n")[0])
    parser.add_argument("--environments", type=int, default=200, help="environments (200)")
    parser.add_argument("--checks", type=int, default=3, help="http checks per environment (3)")
    parser.add_argument("--interval", default="10s", help="each check's interval (10s)")
    parser.add_argument("--seconds", type=float, default=60.0, help="the measured window (60)")
    parser.add_argument(
        "--warmup", type=float, default=15.0, help="seconds after the first full round before the window (15)"
    )
    parser.add_argument("--services", type=int, default=8, help="loopback ports the test services serve (8)")
    parser.add_argument(
        "--database-url",
        help="a PostgreSQL server (postgresql+psycopg://user@host:port/...): the bench creates and drops "
        "a bench_health_<random> database there (default: a SQLite file in a temporary directory)",
    )
    parser.add_argument("--profile", action="store_true", help="run the server under cProfile; print its top")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (database, log)")
    parser.add_argument("--serve-services", type=int, metavar="PORTS", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_services:
        asyncio.run(serve_services(args.serve_services))
        return
    try:
        interval = parse_duration(args.interval)
    except ValueError as exc:
        parser.error(f"--interval: {exc}")
    if args.environments < 1 or args.checks < 1 or args.seconds <= 0 or args.services < 1:
        parser.error("--environments, --checks, --services and --seconds must be positive")

    command = "python -m bench.health" + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")
    backend = "PostgreSQL" if args.database_url else f"SQLite {sqlite3.sqlite_version}"
    checks_total = args.environments * args.checks
    expected_rate = checks_total / interval
    print(command)
    print(
        f"{cpu_model()}, nproc {nproc()}, Python {platform.python_version()}, aiohttp {aiohttp.__version__}, "
        f"SQLAlchemy {sa.__version__}, {backend}\n"
        f"{args.environments} environments x {args.checks} http checks every {interval:g} s "
        f"({checks_total} checks, {expected_rate:g} measurements/s expected), "
        f"{args.services} service ports; warm-up {args.warmup:g} s, window {args.seconds:g} s\n"
    )
    t_all = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="shipyard-bench-health-"))
    services = Services(args.services)
    server: Server | None = None
    ok = False
    try:
        with fresh_database(args.database_url, tmp, prefix="health") as url:
            config_file = tmp / "shipyard.yml"
            config_file.write_text(
                yaml.safe_dump(config(args.environments, args.checks, interval, services.ports))
            )
            env = {"SHIPYARD_CONFIG": str(config_file)}
            profile_to = tmp / "server.prof"
            if args.profile:
                server = ProfiledServer(tmp, url, 0, env=env, profile_to=profile_to)
            else:
                server = Server(tmp, url, 0, env=env)
            took = server.start()
            first = wait_for_first_round(url, checks_total, timeout=60 + interval)
            print(f"== server ready after {took:.1f} s; every check measured once {first:.1f} s later")
            time.sleep(args.warmup)
            load_before = load_average()
            w0, cpu0, svc0, t0 = datetime.now(UTC), server.cpu(), services.cpu(), time.monotonic()
            time.sleep(args.seconds)
            w1, cpu1, svc1, t1 = datetime.now(UTC), server.cpu(), services.cpu(), time.monotonic()
            load_after = load_average()
            time.sleep(min(interval, 5.0))  # the window's last occurrences are measured (or missed)
            server.stop()
            server = None
            f = figures(url, interval, args.checks, w0, w1)
        wall = t1 - t0
        cpu_pct = 100.0 * (cpu1 - cpu0) / wall
        svc_pct = 100.0 * (svc1 - svc0) / wall
        p99 = percentile(f.lateness, 99) if f.lateness else float("inf")
        rate = f.measured / wall
        errors = sum(n for r, n in f.results.items() if r != "passed")
        print(
            f"\n== window {w0:%H:%M:%S} to {w1:%H:%M:%S} ({wall:.1f} s); "
            f"load average {load_before} -> {load_after}"
        )
        print(f"server CPU          {cpu_pct:.1f} % of a core ({cpu1 - cpu0:.2f} s CPU)")
        print(f"test services' CPU  {svc_pct:.1f} % of a core")
        print(
            f"measurements        {f.measured:,} of {f.due:,} due in the window: {rate:.1f}/s "
            f"(expected {expected_rate:g}/s); missed {f.missed}, measured twice {f.extra}"
        )
        print("results             " + ", ".join(f"{r} {n:,}" for r, n in f.results.most_common()))
        for detail, n in f.details.most_common(5):
            print(f"  {n:,} x {detail}")
        print(
            f"lateness (at - due) p50 {fmt_s(f.lateness, 50)}, p99 {fmt_s(f.lateness, 99)}, "
            f"max {f.lateness[-1] if f.lateness else float('nan'):.3f} s"
        )
        print(
            f"spacing jitter      p50 {fmt_s(f.jitter, 50)}, p99 {fmt_s(f.jitter, 99)}, "
            f"max {f.jitter[-1] if f.jitter else float('nan'):.3f} s  (|at[i] - at[i-1] - interval|)"
        )
        cpu_ok, late_ok = cpu_pct < TARGET_CPU_PCT, p99 <= TARGET_P99_S and f.missed == 0
        ok = cpu_ok and late_ok and errors == 0
        print(
            f"\n{'PASS' if ok else 'FAIL'}: CPU {cpu_pct:.1f} % {'<' if cpu_ok else '>='} "
            f"{TARGET_CPU_PCT:g} % of a core; lateness p99 {p99:.3f} s "
            f"{'<=' if p99 <= TARGET_P99_S else '>'} {TARGET_P99_S:g} s; "
            f"missed {f.missed}; errors {errors}"
        )
        if args.profile and profile_to.exists():
            print("\n== the server's main thread, by cumulative time (cProfile)")
            pstats.Stats(str(profile_to)).sort_stats("cumulative").print_stats(30)
            print("== by own time")
            pstats.Stats(str(profile_to)).sort_stats("tottime").print_stats(25)
    finally:
        if server is not None:
            server.stop()
        services.stop()
        if args.keep:
            print(f"(kept {tmp})")
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\ntotal {time.perf_counter() - t_all:.1f} s")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
