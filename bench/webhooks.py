"""Webhook benchmark: deliveries per second from a real ``shipyard serve`` to a local receiver, and
the delay from an engine event to its delivery.

A receiver (aiohttp, on its own thread and event loop, on a loopback port) checks every
delivery's Standard Webhooks signature and notes when it arrived. ``shipyard serve`` runs as a
subprocess (``bench.api.Server``: a fresh SQLite file, or a fresh database on ``--database-url``;
an admin token; the pipeline ``bench``: two stages of one job running ``true``, no environment)
with the receiver's address allow-listed. Two phases, each on a fresh server:

  burst    runner off (capacity 0): ``--subscriptions`` subscriptions to ``run.started``, then
           ``--runs`` runs triggered over the REST API as fast as 32 clients can. Each run makes
           one message per subscription at once, so the server has a backlog to send: deliveries
           per second is the number delivered over the time from the first to the last arrival.
  paced    runner on: one subscription to every event type, runs triggered at ``--rate`` per
           second for ``--seconds``; each run makes four messages (run.started, stage.finished
           twice, run.finished). The delay is from the event (its ``timestamp``:
           the engine's decision, just before the commit) to the message's arrival.

Also reported: messages missing, messages that arrived more than once, bad signatures.

    python -m bench.webhooks                 # 500 runs x 8 subscriptions; 10 runs/s for 15 s
    python -m bench.webhooks --quick         # a smaller smoke run (< 30 s)
    python -m bench.webhooks --database-url postgresql+psycopg://postgres@127.0.0.1/postgres

Targets (SQLite): >= 200 deliveries/s; event to delivery p99 <= 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import sqlalchemy as sa
from aiohttp import web

from bench.api import PIPELINE_NAME, TOKEN, Server, cpu_model, fresh_database, nproc, percentile
from bot.webhooks import signing

#: the pipeline both phases run (named as ``bench.api`` names it): no environment, so that runs
#: never queue for an environment's lock and the figures are about webhooks alone
PIPELINE = f"""\
name: {PIPELINE_NAME}
stages:
  - name: build
    jobs: [{{name: compile, run: ["true"]}}]
  - name: ship
    jobs: [{{name: copy, run: ["true"]}}]
"""
MESSAGES_PER_RUN = 4  # run.started, stage.finished (2), run.finished
TARGET_RATE = 200.0
TARGET_P99_S = 1.0
ALL_EVENTS = [
    "run.started",
    "stage.finished",
    "deployment.finished",
    "gate.waiting",
    "gate.decided",
    "run.finished",
]


@dataclass(frozen=True)
class Arrival:
    at: float  # time.time() when the receiver had read the request
    path: str
    msg_id: str
    type: str
    event_at: float  # the event's time, from the payload


@dataclass
class Receiver:
    """The receiving end, on its own thread: the bench's HTTP clients cannot delay it."""

    secrets: dict[str, str] = field(default_factory=dict)  # path -> secret
    arrivals: list[Arrival] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        at = time.time()
        secret = self.secrets.get(request.path)
        try:
            if secret is None:
                raise signing.BadSignature(f"no subscription at {request.path}")
            msg_id = signing.verify(secret, {k.lower(): v for k, v in request.headers.items()}, body, at)
        except signing.BadSignature as exc:
            self.bad.append(str(exc))
            return web.Response(status=400)
        payload = json.loads(body)
        event_at = datetime.fromisoformat(payload["timestamp"]).timestamp()
        self.arrivals.append(Arrival(at, request.path, msg_id, payload["type"], event_at))
        return web.Response(text="ok")

    def start(self) -> None:
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_post("/hook/{n}", self.handle)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=1024)
            loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, name="receiver", daemon=True)
        self._thread.start()
        ready.wait(10)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def url(self, n: int) -> str:
        return f"http://127.0.0.1:{self.port}/hook/{n}"


async def _subscribe(
    session: aiohttp.ClientSession, base: str, receiver: Receiver, n: int, events: list[str]
) -> None:
    async with session.post(
        f"{base}/api/v1/webhooks", json={"url": receiver.url(n), "events": events}
    ) as reply:
        body = await reply.json()
        if reply.status != 201:
            raise SystemExit(f"could not subscribe: {reply.status} {body}")
    receiver.secrets[f"/hook/{n}"] = body["secret"]


async def _trigger(session: aiohttp.ClientSession, base: str) -> str:
    async with session.post(f"{base}/api/v1/pipelines/{PIPELINE_NAME}/runs", json={}) as reply:
        body = await reply.json()
        if reply.status != 202:
            raise SystemExit(f"trigger failed: {reply.status} {body}")
        return str(body["id"])


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {TOKEN}"},
        connector=aiohttp.TCPConnector(limit=64),
        timeout=aiohttp.ClientTimeout(total=60),
    )


async def _wait_for(receiver: Receiver, count: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while len({a.msg_id + a.path for a in receiver.arrivals}) < count:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


@dataclass
class Result:
    name: str
    expected: int
    arrivals: list[Arrival]
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def unique(self) -> int:
        return len({a.msg_id + a.path for a in self.arrivals})

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in Counter(a.msg_id + a.path for a in self.arrivals).values())

    @property
    def rate(self) -> float:
        if len(self.arrivals) < 2:
            return float("nan")
        span = max(a.at for a in self.arrivals) - min(a.at for a in self.arrivals)
        return len(self.arrivals) / span if span > 0 else float("nan")

    def delay(self, q: float) -> float:
        return percentile(sorted(a.at - a.event_at for a in self.arrivals), q)


async def burst(args: argparse.Namespace, work: Path) -> Result:
    receiver = Receiver()
    receiver.start()
    (work / "burst").mkdir()
    with fresh_database(args.database_url, work / "burst") as url:
        server = Server(work / "burst", url, capacity=0)
        (work / "burst" / "pipelines" / f"{PIPELINE_NAME}.yml").write_text(PIPELINE)
        server.start()
        try:
            async with _session() as session:
                for n in range(args.subscriptions):
                    await _subscribe(session, server.base, receiver, n, ["run.started"])
                limit = asyncio.Semaphore(32)

                async def one() -> str:
                    async with limit:
                        return await _trigger(session, server.base)

                t0 = time.monotonic()
                await asyncio.gather(*(one() for _ in range(args.runs)))
                triggered = time.monotonic() - t0
            expected = args.runs * args.subscriptions
            complete = await _wait_for(receiver, expected, args.timeout)
            result = Result("burst", expected, list(receiver.arrivals), triggered)
            result.notes.append(f"{args.runs} runs triggered in {triggered:.1f} s")
            if not complete:
                result.notes.append(f"gave up waiting after {args.timeout:.0f} s")
            result.notes += [f"bad signature: {b}" for b in receiver.bad[:3]]
            return result
        finally:
            server.stop()
            receiver.stop()


async def paced(args: argparse.Namespace, work: Path) -> Result:
    receiver = Receiver()
    receiver.start()
    (work / "paced").mkdir()
    with fresh_database(args.database_url, work / "paced") as url:
        server = Server(work / "paced", url, capacity=args.capacity)
        (work / "paced" / "pipelines" / f"{PIPELINE_NAME}.yml").write_text(PIPELINE)
        server.start()
        try:
            async with _session() as session:
                await _subscribe(session, server.base, receiver, 0, ALL_EVENTS)
                runs = int(args.rate * args.seconds)
                start = time.monotonic()
                pending = []
                for i in range(runs):
                    await asyncio.sleep(max(0.0, start + i / args.rate - time.monotonic()))
                    pending.append(asyncio.create_task(_trigger(session, server.base)))
                await asyncio.gather(*pending)
            expected = runs * MESSAGES_PER_RUN
            complete = await _wait_for(receiver, expected, args.timeout)
            result = Result("paced", expected, list(receiver.arrivals), args.seconds)
            result.notes.append(f"{runs} runs at {args.rate:g}/s, runner capacity {args.capacity}")
            if not complete:
                result.notes.append(f"gave up waiting after {args.timeout:.0f} s")
            result.notes += [f"bad signature: {b}" for b in receiver.bad[:3]]
            return result
        finally:
            server.stop()
            receiver.stop()


def report(results: list[Result]) -> None:
    print(
        "| phase | messages | arrived | missing | duplicates | deliveries/s | delay p50 ms | delay p99 ms |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r.name} | {r.expected:,} | {r.unique:,} | {r.expected - r.unique:,} | {r.duplicates} "
            f"| {r.rate:,.0f} | {r.delay(50) * 1000:,.0f} | {r.delay(99) * 1000:,.0f} |"
        )
    for r in results:
        for note in r.notes:
            print(f"  {r.name}: {note}")
    by_name = {r.name: r for r in results}
    if "burst" in by_name:
        rate = by_name["burst"].rate
        verdict = "met" if rate >= TARGET_RATE else "NOT MET"
        print(f"deliveries/s (burst): {rate:,.0f} (target >= {TARGET_RATE:.0f}: {verdict})")
    if "paced" in by_name:
        p99 = by_name["paced"].delay(99)
        verdict = "met" if p99 <= TARGET_P99_S else "NOT MET"
        target = TARGET_P99_S * 1000
        print(f"event -> delivery p99 (paced): {p99 * 1000:,.0f} ms (target <= {target:.0f} ms: {verdict})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=500, help="burst: runs triggered (500)")
    parser.add_argument("--subscriptions", type=int, default=8, help="burst: subscriptions (8)")
    parser.add_argument("--rate", type=float, default=10.0, help="paced: runs per second (10)")
    parser.add_argument("--seconds", type=float, default=15.0, help="paced: for how long (15)")
    parser.add_argument("--capacity", type=int, default=4, help="paced: runner capacity (4)")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="the longest wait for deliveries (120 s)"
    )
    parser.add_argument("--phases", default="burst,paced", help="burst,paced (both)")
    parser.add_argument("--quick", action="store_true", help="200 runs x 4 subscriptions; 10 runs/s for 5 s")
    parser.add_argument("--database-url", default=None, help="a PostgreSQL server (a fresh database on it)")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.subscriptions, args.seconds = 200, 4, 5.0
    os.environ["SHIPYARD_WEBHOOK_ALLOW"] = "127.0.0.1"
    backend = "PostgreSQL" if args.database_url else f"SQLite {sqlite3.sqlite_version}"
    print("python -m bench.webhooks " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(
        f"{cpu_model()}, nproc {nproc()}, Python {platform.python_version()}, "
        f"SQLAlchemy {sa.__version__}, aiohttp {aiohttp.__version__}, {backend}\n"
    )
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="shipyard-bench-webhooks-") as tmp:
        work = Path(tmp)
        for phase in args.phases.split(","):
            runner: Any = {"burst": burst, "paced": paced}[phase.strip()]
            results.append(asyncio.run(runner(args, work)))
    report(results)


if __name__ == "__main__":
    main()
