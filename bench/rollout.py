"""Canary abort benchmark: how long a canary whose service starts failing keeps taking traffic
after its analysis has measured the failure.

Everything is real and on loopback: two copies of ``examples/canary/service.py`` (the ``stable``
and ``canary`` pools, each counting the requests it serves for Prometheus), an nginx in front of
them whose upstream Shipyard's nginx router writes, a Prometheus scraping both every second, and
``shipyard serve`` (``bench.api.Server``: a fresh SQLite file, or a fresh database on
``--database-url``). A load generator in the bench sends ``--rate`` requests per second through
nginx, each on its own connection, and records when it sent each one and which pool answered.

Each round: the canary server is made healthy, a run of the pipeline ``roll`` starts (its stage
is a canary: ``set_weight: 20``, then an analysis of ``error-rate``, the canary's 5xx share over
3 s, measured every second, ``failure_limit: 1``); once the analysis has a passing measurement,
the canary server starts failing every request (``POST /break``). Prometheus sees it, the next
measurement fails, the analysis aborts the rollout and the router puts all traffic back on
stable. Per round:

  detect     the failing measurement's ``at`` (when it started, from
             ``GET /runs/{run}/verification``) minus the moment the canary broke
  confirmed  the ``rollout.weights_applied`` event back to all-stable (the router's change read
             back: nginx tested, reloaded and settled) minus the failing measurement's ``at``
  traffic    the send time of the last request the canary answered minus the failing
             measurement's ``at``: after it, no request reached the canary (checked for
             ``--quiet`` seconds after the run ended). The figure the target is about.

    python -m bench.rollout                  # 20 aborts
    python -m bench.rollout --aborts 5 --rate 100
    python -m bench.rollout --database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres

Target: traffic p99 <= 2 s (measurement to no request on the canary). Needs nginx and
Prometheus (``--nginx``, ``--prometheus``: Debian's paths by default).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.api import ROOT, TOKEN, Server, cpu_model, free_port, fresh_database, nproc, percentile

TARGET_P99_S = 2.0
SERVICE = ROOT / "examples" / "canary" / "service.py"
WEIGHT = 20
ERRORS = (
    'sum(rate(http_requests_total{pool="canary",code=~"5.."}[3s]))'
    ' / sum(rate(http_requests_total{pool="canary"}[3s]))'
)
PIPELINE = f"""\
# bench.rollout: a canary the bench breaks during its analysis
name: roll
parameters:
  - {{name: version, required: true}}
stages:
  - name: production
    environment: production
    strategy:
      canary:
        router: web
        steps:
          - set_weight: {WEIGHT}
          - analysis: {{checks: [error-rate], duration: 10m, failure_limit: 1, inconclusive_limit: 100}}
          - set_weight: 100
        abort: [{{name: remove-canary, run: ["true"]}}]
    jobs:
      - {{name: deploy-canary, run: ["true"]}}
"""
NGINX_CONF = """\
worker_processes 1;
daemon off;
pid nginx.pid;
error_log error.log notice;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path temp/body;
    proxy_temp_path temp/proxy;
    fastcgi_temp_path temp/fastcgi;
    uwsgi_temp_path temp/uwsgi;
    scgi_temp_path temp/scgi;
    include shipyard/web.conf;
    server {{
        listen 127.0.0.1:{port};
        location / {{ proxy_pass http://web; }}
    }}
}}
"""


# -- the real parts --------------------------------------------------------------------------------


def _http(method: str, url: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            text = answer.read().decode()
            status = answer.status
    except urllib.error.HTTPError as exc:
        text, status = exc.read().decode(), exc.code
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def _wait(what: str, ok: Any, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{what}: the process exited with {proc.returncode}")
        try:
            got = ok()
        except OSError:
            got = None
        if got:
            return got
        time.sleep(0.05)
    raise SystemExit(f"{what}: not within {timeout:g} s")


class Processes:
    """Child processes, their output in ``tmp/<name>.log``, stopped in reverse order."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[tuple[subprocess.Popen[bytes], int]] = []

    def start(self, name: str, argv: list[str], stop_signal: int = signal.SIGTERM) -> subprocess.Popen[bytes]:
        with (self.tmp / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append((proc, stop_signal))
        return proc

    def stop(self) -> None:
        for proc, sig in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(sig)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@dataclass
class Setup:
    nginx_port: int
    stable: str
    canary: str
    prometheus: str
    config: dict[str, Any]


def start_parts(procs: Processes, tmp: Path, nginx: str, prometheus: str) -> Setup:
    """The two services, nginx in front of them and Prometheus scraping them."""
    ports = {pool: free_port() for pool in ("stable", "canary")}
    for pool, port in ports.items():
        proc = procs.start(pool, [sys.executable, str(SERVICE), "--pool", pool, "--port", str(port)])
        _wait(
            pool, lambda p=port: urllib.request.urlopen(f"http://127.0.0.1:{p}/metrics", timeout=1), 15, proc
        )
    stable, canary = (f"127.0.0.1:{ports[p]}" for p in ("stable", "canary"))

    root = tmp / "nginx"
    for sub in ("temp", "shipyard"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    nginx_port = free_port()
    (root / "nginx.conf").write_text(NGINX_CONF.format(port=nginx_port))
    (root / "shipyard" / "web.conf").write_text(
        f"upstream web {{ server {stable}; server {canary} down; }}\n"
    )
    argv = [nginx, "-p", str(root), "-e", str(root / "error.log"), "-c", str(root / "nginx.conf")]
    proc = procs.start("nginx", argv, signal.SIGQUIT)
    _wait("nginx", lambda: urllib.request.urlopen(f"http://127.0.0.1:{nginx_port}/", timeout=1), 15, proc)

    prom_port = free_port()
    scrape = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "web",
                "static_configs": [
                    {"targets": [stable], "labels": {"pool": "stable"}},
                    {"targets": [canary], "labels": {"pool": "canary"}},
                ],
            }
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(scrape))
    prom_argv = [
        prometheus,
        f"--config.file={tmp / 'prometheus.yml'}",
        f"--web.listen-address=127.0.0.1:{prom_port}",
        f"--storage.tsdb.path={tmp / 'prometheus'}",
    ]
    proc = procs.start("prometheus", prom_argv)
    prom = f"http://127.0.0.1:{prom_port}"
    _wait("prometheus", lambda: urllib.request.urlopen(f"{prom}/-/ready", timeout=1), 30, proc)

    def nginx_argv(*extra: str) -> list[str]:
        return [*argv, *extra]

    config = {
        "environments": {
            "production": {
                "routers": {
                    "web": {
                        "nginx": {
                            "include": str(root / "shipyard" / "web.conf"),
                            "upstream": "web",
                            "test": nginx_argv("-t"),
                            "reload": nginx_argv("-s", "reload"),
                        },
                        "pools": {"stable": [stable], "canary": [canary]},
                    }
                },
                "checks": {
                    "error-rate": {
                        "prometheus": {"url": prom, "query": ERRORS},
                        "fail_if": "> 0.05",
                        "pass_if": "< 0.01",
                        "interval": "1s",
                    }
                },
            }
        }
    }
    return Setup(nginx_port, f"http://{stable}", f"http://{canary}", prom, config)


# -- the load ----------------------------------------------------------------------------------------


@dataclass
class Load:
    """Requests through nginx from a thread of their own: (send time, who answered)."""

    port: int
    rate: float
    workers: int = 4
    hits: list[tuple[float, str]] = field(default_factory=list)
    failures: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Load:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    async def _run(self) -> None:
        connector = aiohttp.TCPConnector(force_close=True, limit=0)
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await asyncio.gather(*(self._worker(session, k) for k in range(self.workers)))

    async def _worker(self, session: aiohttp.ClientSession, k: int) -> None:
        url = f"http://127.0.0.1:{self.port}/"
        every = self.workers / self.rate
        start = time.monotonic() + k * every / self.workers
        n = 0
        while not self._stop.is_set():
            sent = time.time()
            try:
                async with session.get(url) as answer:
                    who = (await answer.text()).split(" ", 1)[0]
            except (aiohttp.ClientError, TimeoutError, OSError):
                who = ""
            if who in ("stable", "canary"):
                self.hits.append((sent, who))
            else:
                self.failures += 1
            n += 1
            await asyncio.sleep(max(0.0, start + n * every - time.monotonic()))

    def last_canary(self, since: float) -> float | None:
        return max((t for t, who in list(self.hits) if who == "canary" and t >= since), default=None)


# -- one round ---------------------------------------------------------------------------------------


@dataclass
class Round:
    detect: float
    confirmed: float
    traffic: float
    reason: str


def _run(base: str, run_id: str) -> dict[str, Any]:
    status, run = _http("GET", f"{base}/api/v1/runs/{run_id}")
    assert status == 200, run
    return dict(run)


def _measurements(base: str, run_id: str) -> list[dict[str, Any]]:
    status, body = _http("GET", f"{base}/api/v1/runs/{run_id}/verification")
    assert status == 200, body
    return [m for a in body["items"] for m in a["measurements"]]


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _all_stable_confirmed(base: str, run_id: str) -> float:
    """The ``at`` of the last ``rollout.weights_applied`` (the run has finished: the stream ends)."""
    request = urllib.request.Request(
        f"{base}/api/v1/runs/{run_id}/events", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        text = answer.read().decode()
    applied = [
        json.loads(block.split("data: ", 1)[1])
        for block in text.split("\n\n")
        if "event: rollout.weights_applied\n" in block
    ]
    last = applied[-1]
    assert last["data"]["canary"] == 0, last
    return _ts(last["at"])


def _canary_error_rate(prometheus: str) -> float | None:
    """What the check would measure now; None: no data (no traffic on the canary in the window)."""
    query = urllib.parse.urlencode({"query": ERRORS})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query?{query}", timeout=5) as answer:
        result = json.load(answer)["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def one_round(k: int, base: str, setup: Setup, load: Load, quiet: float) -> Round:
    status, body = _http("POST", f"{setup.canary}/deploy?version=2.0.{k}")  # healthy again
    assert status == 200, body
    # the previous round's failures must have left the check's window, or this round's first
    # measurement fails on them (no traffic on the canary: no data, NaN)
    _wait(
        f"round {k}: the last round's errors out of the window",
        lambda: (rate := _canary_error_rate(setup.prometheus)) is None or not rate > 0.01,
        30,
    )
    status, run = _http("POST", f"{base}/api/v1/pipelines/roll/runs", {"parameters": {"version": f"2.0.{k}"}})
    assert 200 <= status < 300, run
    run_id = run["id"]

    def measuring() -> bool:
        now = _run(base, run_id)
        if now["finished_at"] is not None:
            raise SystemExit(
                f"round {k}: the run ended {now['status']} before the canary broke: {now['reason']}"
            )
        rollout = now["rollout"] or {}
        if rollout.get("analysis") is None or (rollout.get("applied") or {}).get("canary") != WEIGHT:
            return False
        return any(m["result"] == "passed" for m in _measurements(base, run_id))

    _wait(f"round {k}: a passing measurement at {WEIGHT} %", measuring, 60)
    broke = time.time()
    status, body = _http("POST", f"{setup.canary}/break?share=1")
    assert status == 200, body
    done = _wait(
        f"round {k}: the run ending",
        lambda: (r := _run(base, run_id))["finished_at"] is not None and r,
        60,
    )
    if done["status"] != "failed" or (done["rollout"] or {}).get("status") != "aborted":
        raise SystemExit(f"round {k}: the run ended {done['status']}: {done['reason']}")
    time.sleep(quiet)  # any request still reaching the canary would show now
    failed = min(_ts(m["at"]) for m in _measurements(base, run_id) if m["result"] == "failed")
    confirmed = _all_stable_confirmed(base, run_id)
    last = load.last_canary(broke)
    if last is None:
        raise SystemExit(f"round {k}: no request reached the canary after it broke: raise --rate")
    return Round(failed - broke, confirmed - failed, last - failed, done["reason"])


# -- running it --------------------------------------------------------------------------------------


def fmt(values: list[float]) -> str:
    s = sorted(values)
    return f"p50 {percentile(s, 50):.3f} s, p99 {percentile(s, 99):.3f} s, max {s[-1]:.3f} s"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rollout", description=__doc__.split("\n\n")[0])
    parser.add_argument("--aborts", type=int, default=20, help="rounds, each a canary aborted (20)")
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second through nginx (200)")
    parser.add_argument("--quiet", type=float, default=1.0, help="seconds to watch after each run ends (1)")
    parser.add_argument("--nginx", default=os.environ.get("SHIPYARD_NGINX", "/usr/sbin/nginx"))
    parser.add_argument("--prometheus", default=shutil.which("prometheus") or "/usr/bin/prometheus")
    parser.add_argument(
        "--database-url",
        help="a PostgreSQL server: the bench creates and drops a bench_rollout_<random> database there "
        "(default: a SQLite file in a temporary directory)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, database)")
    args = parser.parse_args(argv)
    if args.aborts < 1 or args.rate <= 0:
        parser.error("--aborts and --rate must be positive")
    for binary, option in ((args.nginx, "--nginx"), (args.prometheus, "--prometheus")):
        if not os.access(binary, os.X_OK):
            parser.error(f"{option}: {binary} cannot run (install it, or name the binary)")

    backend = "PostgreSQL" if args.database_url else f"SQLite {sqlite3.sqlite_version}"
    print("python -m bench.rollout " + " ".join(sys.argv[1:] if argv is None else argv))
    print(
        f"{cpu_model()}, nproc {nproc()}, Python {platform.python_version()}, {backend}\n"
        f"{args.aborts} aborts; canary at {WEIGHT} %, error-rate measured every 1 s (Prometheus "
        f"scrapes every 1 s, 3 s window); load {args.rate:g} requests/s through nginx\n"
    )
    t_all = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="shipyard-bench-rollout-"))
    procs = Processes(tmp)
    server: Server | None = None
    load: Load | None = None
    rounds: list[Round] = []
    try:
        setup = start_parts(procs, tmp, args.nginx, args.prometheus)
        load = Load(setup.nginx_port, args.rate).start()
        with fresh_database(args.database_url, tmp, prefix="rollout") as url:
            (tmp / "shipyard.yml").write_text(yaml.safe_dump(setup.config))
            server = Server(tmp / "server", url, 4, env={"SHIPYARD_CONFIG": str(tmp / "shipyard.yml")})
            (tmp / "server" / "pipelines" / "roll.yml").write_text(PIPELINE)
            took = server.start()
            print(f"== server ready after {took:.1f} s")
            for k in range(1, args.aborts + 1):
                r = one_round(k, server.base, setup, load, args.quiet)
                rounds.append(r)
                print(
                    f"  {k:3}  detect {r.detect:6.3f} s  confirmed {r.confirmed:6.3f} s  "
                    f"traffic {r.traffic:6.3f} s   {r.reason[:70]}"
                )
            server.stop()
            server = None
    finally:
        if load is not None:
            load.stop()
        if server is not None:
            server.stop()
        procs.stop()
        if args.keep:
            print(f"(kept {tmp})")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    assert load is not None
    sent = len(load.hits) + load.failures
    print(f"\nrequests {sent:,}, failed {load.failures:,} (not answered by either pool)")
    print(f"detect    (break -> failing measurement)           {fmt([r.detect for r in rounds])}")
    print(f"confirmed (measurement -> router read back)        {fmt([r.confirmed for r in rounds])}")
    traffic = sorted(r.traffic for r in rounds)
    print(f"traffic   (measurement -> no request on canary)    {fmt(traffic)}")
    p99 = percentile(traffic, 99)
    ok = p99 <= TARGET_P99_S
    print(f"\n{'PASS' if ok else 'FAIL'}: traffic p99 {p99:.3f} s {'<=' if ok else '>'} {TARGET_P99_S:g} s")
    print(f"total {time.perf_counter() - t_all:.1f} s")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
