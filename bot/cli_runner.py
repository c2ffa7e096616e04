"""``shipyard runner``: run jobs on this machine for a Shipyard server elsewhere.

The runner speaks to its server over HTTP only (no database access) with a token of the
``runner`` role (``shipyard token create eu-1 --role runner``), given in ``SHIPYARD_RUNNER_TOKEN``
so it shows in no process list. It runs the built-in runner's loop (``core.runtime.runner``)
through ``HttpLink``: the same claims, leases, records and supervisor. SIGTERM drains it: it
claims nothing new, lets its jobs finish and report, then exits; SIGINT likewise, and so does a
drain from the server (``POST /api/v1/runners/{name}/drain``). ``--labels`` says which jobs it
may take: those whose labels it all carries (docs/runners.md).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from core.labels import parse_labels
from core.runtime.executor import SubprocessExecutor
from core.runtime.http_link import MAX_LEASE_S, HttpLink, Refused, ServerUnreachable
from core.runtime.runner import Runner
from core.runtime.waiting import wait_event

log = logging.getLogger("shipyard.runner")
TOKEN_ENV = "SHIPYARD_RUNNER_TOKEN"
#: the longest a lease check waits on the server for a cancel (a long poll)
WATCH_S = 10.0


def register(sub: Any) -> None:
    s = sub.add_parser("runner", help="run jobs here for a Shipyard server elsewhere (over HTTP)")
    s.add_argument("--url", required=True, help="the server, e.g. https://shipyard.internal")
    s.add_argument("--name", default=socket.gethostname(), help="this runner: its token's principal")
    s.add_argument("--capacity", type=int, default=4, help="jobs at once (default 4)")
    s.add_argument(
        "--labels",
        default="",
        help="comma-separated labels (linux,prod-eu): jobs that need only these may run here",
    )
    s.add_argument("--workdir", type=Path, default=Path("shipyard-runner"), help="where jobs run")
    s.add_argument("--lease", type=float, default=30.0, help="seconds a claim holds without renewal")
    s.add_argument(
        "--max-log-bytes",
        type=int,
        default=1 << 20,
        help="output kept per job attempt (default 1 MiB; beyond it the head and the last 64 KiB)",
    )
    s.add_argument(
        "--poll", type=float, default=1.0, help="seconds between tries while the server is unreachable"
    )
    s.set_defaults(func=cmd_runner)


def cmd_runner(args: argparse.Namespace) -> int:
    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        print(f"set {TOKEN_ENV} to a token of the runner role (shipyard token create NAME --role runner)")
        return 2
    if (problem := _bad_numbers(args)) is not None:
        print(problem)
        return 2
    try:
        args.labels = parse_labels(args.labels)
    except ValueError as exc:
        print(f"--labels: {exc}")
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(_serve(args, token))


def _bad_numbers(args: argparse.Namespace) -> str | None:
    """What is wrong with the numbers given, if anything: the server would refuse every claim
    under a lease it does not grant, and a poll of 0 (or NaN) would ask it without pause."""
    if args.capacity < 1:
        return "--capacity must be at least 1"
    if not 3 <= args.lease <= MAX_LEASE_S:
        return f"--lease must be from 3 to {MAX_LEASE_S} seconds"
    if not 0 < args.poll <= 3600:
        return "--poll must be more than 0 seconds (at most 3600)"
    return None


async def _serve(args: argparse.Namespace, token: str) -> int:
    link = HttpLink(
        args.url, token, args.name, labels=args.labels, capacity=args.capacity, version=_version()
    )
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    runner = Runner(
        link,
        SubprocessExecutor(),
        name=args.name,
        workdir=workdir,
        capacity=args.capacity,
        lease_s=args.lease,
        poll_interval=args.poll,
        max_log_bytes=args.max_log_bytes,
        watch_s=WATCH_S,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if (code := await _started(runner, args.poll, stop)) is not None:
        await link.close()
        return code
    labels = ", ".join(args.labels) or "no labels"
    print(
        f"shipyard runner {args.name} working for {args.url} ({args.capacity} at once; {labels})", flush=True
    )
    stopped, drained = asyncio.ensure_future(stop.wait()), asyncio.ensure_future(link.drained.wait())
    await asyncio.wait([stopped, drained], return_when=asyncio.FIRST_COMPLETED)
    for waiter in (stopped, drained):
        waiter.cancel()
    why = "the server drained this runner" if link.drained.is_set() else "asked to stop"
    if link.refusal:
        print(link.refusal, file=sys.stderr, flush=True)
        why = "the server refuses its claims"
    print(f"draining ({why}): no new jobs; waiting for {len(runner.jobs)} running", flush=True)
    await runner.drain()
    await link.close()
    print(f"shipyard runner {args.name} stopped", flush=True)
    return 2 if link.refusal else 0


async def _started(runner: Runner, poll: float, stop: asyncio.Event) -> int | None:
    """Start ``runner`` once its server answers (a runner may come up before its server), or
    the exit code: 2 when the server refuses it (its token, its protocol), 0 when stopped first."""
    said = False
    while not stop.is_set():
        try:
            await runner.start()  # (asks at once what it held: says whether the server takes it)
            return None
        except Refused as exc:
            print(exc.message, file=sys.stderr)
            return 2
        except ServerUnreachable as exc:
            if not said:
                log.warning("server not reachable yet (%s); the runner keeps trying", exc.message)
                said = True
            await wait_event(stop, poll)
    return 0


def _version() -> str:
    try:
        return metadata.version("shipyard")
    except metadata.PackageNotFoundError:
        return "unknown"
