"""Remote runner benchmark: ``shipyard runner`` processes taking jobs from a ``shipyard serve``
over HTTP (the server runs no job itself).

* **throughput**: for 1, 2 and 4 runner processes (``--runners``), each of ``--capacity``, runs
  of one stage of ``--width`` no-op jobs (``true``) until ``--jobs`` jobs ran; from the first
  trigger to the last run's end. A fresh database per row.
* **claim latency**: one job at a time (``--samples``), from the event that made it ready to the
  event of its claim, both as the database recorded them. On PostgreSQL also across replicas:
  the run triggered on one replica, the runner attached to another (woken by ``NOTIFY``).
* **big log**: one job writing ``--log-mb`` MB of output; MB/s from the job's start to its end
  (every chunk stored), and the server's resident memory before, at its peak and after.

    python -m bench.runners                        # SQLite
    python -m bench.runners --db postgres          # PostgreSQL (SHIPYARD_BENCH_POSTGRES_URL)

Targets (from the issue): >= 300 jobs/s with 4 runners; claim latency p99 <= 50 ms (replicas
included); the server's memory flat while a 50 MB log streams through it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.append(str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa

from bench.api import ROOT, TOKEN, Server

TARGET_JOBS_PER_S = 300.0
TARGET_CLAIM_P99_MS = 50.0
POSTGRES = os.environ.get("SHIPYARD_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _wide(width: int) -> str:
    jobs = ", ".join(f"{{name: j{k}, run: 'true'}}" for k in range(width))
    return f"name: wide\nstages:\n  - name: s\n    jobs: [{jobs}]\n"


ONE = "name: one\nstages:\n  - name: s\n    jobs: [{name: j, run: 'true'}]\n"


def _log(mb: int) -> str:
    # base64 of random bytes: text that compresses nowhere and masks nothing
    make = f"head -c {mb * 3 * 1024 * 1024 // 4} /dev/urandom | base64 -w 0 | fold -w 4096"
    return f'name: log\nstages:\n  - name: s\n    jobs: [{{name: j, run: "{make}"}}]\n'


# -- databases and processes -----------------------------------------------------------------------


@contextmanager
def database(kind: str, work: Path) -> Iterator[str]:
    """A fresh, empty database of ``kind`` for one row of the bench."""
    if kind == "sqlite":
        yield f"sqlite:///{work / f'bench-{uuid.uuid4().hex[:8]}.db'}"
        return
    admin = sa.create_engine(POSTGRES, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    name = f"shipyard_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield sa.make_url(POSTGRES).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def _runner_token(url: str, name: str) -> str:
    from core.access import Role
    from storage.directory import Directory
    from storage.store import SqlStore

    store = SqlStore(url)
    try:
        return Directory(store).create_token(name, [Role.RUNNER], datetime.now(UTC), by="bench")
    finally:
        store.dispose()


class Runner:
    """One ``shipyard runner`` process."""

    def __init__(
        self, work: Path, server: Server, name: str, token: str, capacity: int, **extra: str
    ) -> None:
        self.log = work / f"runner-{name}.log"
        self.argv = [
            sys.executable, "-m", "bot.cli", "runner", "--url", server.base, "--name", name,
            "--capacity", str(capacity), "--workdir", str(work / f"runner-{name}"),
            *(a for k, v in extra.items() for a in (f"--{k.replace('_', '-')}", v)),
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
        self.env = {**env, "PYTHONPATH": str(ROOT), "SHIPYARD_RUNNER_TOKEN": token}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Runner:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        _wait(lambda: "working for" in self.log.read_text(errors="replace"), 30, "a runner to start")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _wait(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := predicate():
            return found
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def call(server: Server, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        f"{server.base}/api/v1{path}",
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        text = answer.read()
        return json.loads(text) if text else None


def _trigger(server: Server, pipeline: str) -> str:
    return str(call(server, "POST", f"/pipelines/{pipeline}/runs", {})["id"])


def _finished(server: Server, run_id: str) -> dict[str, Any] | None:
    run = call(server, "GET", f"/runs/{run_id}")
    return run if run["status"] in ("succeeded", "failed", "canceled") else None


def _server(work: Path, url: str, pipelines: dict[str, str], **env: str) -> Server:
    server = Server(work, url, capacity=0, env={"SHIPYARD_POLL_INTERVAL": "5", **env})
    for name, text in pipelines.items():
        (work / "pipelines" / f"{name}.yml").write_text(text)
    server.start()
    return server


@contextmanager
def served(work: Path, url: str, pipelines: dict[str, str], **env: str) -> Iterator[Server]:
    server = _server(work, url, pipelines, **env)
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def runners(work: Path, server: Server, url: str, count: int, capacity: int, **extra: str) -> Iterator[None]:
    started: list[Runner] = []
    try:
        for n in range(count):
            name = f"bench-{n}"
            started.append(Runner(work, server, name, _runner_token(url, name), capacity, **extra).start())
        yield
    finally:
        for runner in started:
            runner.stop()


# -- scenarios -------------------------------------------------------------------------------------


def throughput(kind: str, count: int, args: argparse.Namespace) -> float:
    """Jobs per second with ``count`` runner processes."""
    with tempfile.TemporaryDirectory(prefix="bench-runners-") as tmp, database(kind, Path(tmp)) as url:
        work = Path(tmp)
        with (
            served(work, url, {"wide": _wide(args.width)}) as server,
            runners(work, server, url, count, args.capacity),
        ):
            n_runs = max(1, args.jobs // args.width)
            t0 = time.perf_counter()
            ids = [_trigger(server, "wide") for _ in range(n_runs)]
            for run_id in ids:
                run = _wait(lambda r=run_id: _finished(server, r), 600, f"run {run_id}", interval=0.05)
                if run["status"] != "succeeded":
                    raise SystemExit(f"run {run_id} {run['status']}: {run['reason']}")
            elapsed = time.perf_counter() - t0
    return n_runs * args.width / elapsed


def _latency(url: str, run_id: str) -> float:
    from storage.store import SqlStore

    store = SqlStore(url)
    try:
        events = store.events_after(0, 100, run_id)
    finally:
        store.dispose()
    queued = next(e.at for e in events if e.subject == "job" and e.to_status == "queued")
    running = next(e.at for e in events if e.subject == "job" and e.to_status == "running")
    return (running - queued).total_seconds()


def claim_latency(kind: str, args: argparse.Namespace, *, replicas: bool) -> list[float]:
    """Seconds from a job's readiness to its claim, one job at a time; with ``replicas``, the
    trigger on one server and the runner attached to another on the same database."""
    with tempfile.TemporaryDirectory(prefix="bench-runners-") as tmp, database(kind, Path(tmp)) as url:
        a_dir, b_dir = Path(tmp) / "a", Path(tmp) / "b"
        a_dir.mkdir()
        b_dir.mkdir()
        with served(a_dir, url, {"one": ONE}) as a:
            with served(b_dir, url, {"one": ONE}) if replicas else _same(a) as b:
                with runners(Path(tmp), b, url, 1, 4):
                    _trigger(a, "one")  # (warm-up: imports, first connections)
                    found = []
                    for _ in range(args.samples):
                        run_id = _trigger(a, "one")
                        _wait(lambda r=run_id: _finished(a, r), 60, f"run {run_id}", interval=0.01)
                        found.append(_latency(url, run_id))
                        time.sleep(0.02)
    return found


@contextmanager
def _same(server: Server) -> Iterator[Server]:
    yield server


def _rss_kib(pid: int) -> int:
    with suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def big_log(kind: str, args: argparse.Namespace) -> tuple[float, int, int, int, int, int]:
    """(MB/s, bytes stored, server RSS in KiB: before, peak while written, peak while read back
    over REST, after) for a job writing ``--log-mb`` MB."""
    limit = str(args.log_mb * 1024 * 1024 * 2)
    with tempfile.TemporaryDirectory(prefix="bench-runners-") as tmp, database(kind, Path(tmp)) as url:
        work = Path(tmp)
        with served(work, url, {"log": _log(args.log_mb)}, SHIPYARD_MAX_LOG_BYTES=limit) as server:
            assert server.proc is not None
            pid = server.proc.pid
            with runners(work, server, url, 1, 1, max_log_bytes=limit):
                time.sleep(1)
                before = _rss_kib(pid)
                peak = [before]
                stop = threading.Event()

                def sample() -> None:
                    while not stop.wait(0.05):
                        peak[0] = max(peak[0], _rss_kib(pid))

                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                run_id = _trigger(server, "log")
                run = _wait(lambda: _finished(server, run_id), 600, "the log job", interval=0.1)
                written, peak[0] = peak[0], _rss_kib(pid)
                job = run["stages"][0]["jobs"][0]
                size = _stored_bytes(server, run_id, job["id"])
                stop.set()
                sampler.join()
                after = _rss_kib(pid)
                took = datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])
    return size / 1e6 / took.total_seconds(), size, before, written, peak[0], after


def _stored_bytes(server: Server, run_id: str, job_id: str) -> int:
    """The length of the job's stored output, read back as a client would (streamed)."""
    request = urllib.request.Request(
        f"{server.base}/api/v1/runs/{run_id}/jobs/{job_id}/log", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    size = 0
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            while chunk := answer.read(1 << 20):
                size += len(chunk)
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"GET log: {exc.code} {exc.read()[:200]!r}") from None
    return size


def _ms(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return f"p50 {statistics.median(ms):6.1f} ms   p99 {p99:6.1f} ms   (n={len(ms)})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.runners", description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--runners", default="1,2,4", help="runner processes per throughput row (1,2,4)")
    parser.add_argument("--capacity", type=int, default=16, help="jobs each runner runs at once (16)")
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per throughput row (2000)")
    parser.add_argument("--width", type=int, default=50, help="jobs per run (50)")
    parser.add_argument("--samples", type=int, default=100, help="claim latency samples (100)")
    parser.add_argument("--log-mb", type=int, default=50, help="MB the big-log job writes (50)")
    parser.add_argument("--skip", default="", help="comma-separated: throughput, latency, log")
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    print(f"bench.runners on {args.db}; {os.cpu_count()} CPUs; runner capacity {args.capacity}")
    if "throughput" not in skip:
        for count in (int(c) for c in args.runners.split(",")):
            rate = throughput(args.db, count, args)
            print(f"  {count} runner(s): {rate:7.1f} jobs/s  ({args.jobs} no-op jobs, {args.width} a run)")
        print(f"  target >= {TARGET_JOBS_PER_S:.0f} jobs/s with 4 runners")
    if "latency" not in skip:
        print(f"  claim latency, one server:   {_ms(claim_latency(args.db, args, replicas=False))}")
        if args.db == "postgres":
            print(f"  claim latency, two replicas: {_ms(claim_latency(args.db, args, replicas=True))}")
        print(f"  target p99 <= {TARGET_CLAIM_P99_MS:.0f} ms")
    if "log" not in skip:
        rate, size, before, written, read, after = big_log(args.db, args)
        print(
            f"  {args.log_mb} MB log: {rate:6.1f} MB/s, {size} bytes stored; server RSS "
            f"{before / 1024:.0f} MB before, {written / 1024:.0f} MB peak while written, "
            f"{read / 1024:.0f} MB peak while read back, {after / 1024:.0f} MB after"
        )


if __name__ == "__main__":
    main()
