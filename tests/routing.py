"""Real routers for tests: nginx and haproxy in front of two versions of a web service, and a load
generator that counts where requests land.

``Versions`` are two ``WebService``s whose ``/`` answers ``stable`` and ``canary`` (set
``service.status = 500`` to break one). ``Nginx`` runs Debian's nginx as a foreground master with
one worker, its prefix, logs, pid and temp files in the test's folder, and includes the file
Shipyard's nginx router writes; ``Nginx.router()`` gives a ``RouterDef`` whose ``test`` and
``reload`` argv point at that configuration. ``Haproxy`` runs haproxy with an admin socket in the
test's folder and one ``roundrobin`` backend whose servers are named ``stable`` and ``canary``.

``send(port, n)`` sends ``n`` GETs and tallies the versions that answered. Keep-alive is off:
every request opens its own connection (``Connection: close``), so each request is balanced by
itself and an nginx reload cannot fail a request by closing an idle kept-alive connection under
it; that is also how most real clients in front of a reload behave at worst, not at best.
``Load`` keeps requests going in the background while a test switches traffic.

Without the binaries the tests are skipped with a message, unless ``SHIPYARD_REQUIRE_ROUTERS=1``
(CI), which turns that into a failure; ``SHIPYARD_NGINX``/``SHIPYARD_HAPROXY`` name other binaries.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from core.routing import RouterDef
from core.runtime.nginx_router import render_upstream
from tests.checks.services import WebService
from tests.e2e.server import free_port

NGINX = os.environ.get("SHIPYARD_NGINX", "/usr/sbin/nginx")
HAPROXY = os.environ.get("SHIPYARD_HAPROXY", "/usr/sbin/haproxy")
REQUIRE = os.environ.get("SHIPYARD_REQUIRE_ROUTERS") == "1"


def router_binary(path: str, package: str) -> str:
    """``path`` if it can run; else skips the test (fails it under ``SHIPYARD_REQUIRE_ROUTERS=1``)."""
    if os.access(path, os.X_OK):
        return path
    message = f"{package} is not installed at {path} (apt-get install {package})"
    if REQUIRE:
        pytest.fail(message + " (required: SHIPYARD_REQUIRE_ROUTERS=1)")
    pytest.skip(message)


@dataclass
class Versions:
    """Two running versions of one service."""

    stable: WebService
    canary: WebService

    @property
    def pools(self) -> dict[str, list[str]]:
        """The pools as nginx names the servers: ``host:port``."""
        return {"stable": [self.stable.target], "canary": [self.canary.target]}


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {port} after {timeout}s:\n{log.read_text(errors='replace')}")


def _stop(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


_NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log notice;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {root}/temp/body;
    proxy_temp_path {root}/temp/proxy;
    fastcgi_temp_path {root}/temp/fastcgi;
    uwsgi_temp_path {root}/temp/uwsgi;
    scgi_temp_path {root}/temp/scgi;
    include {include};
    server {{
        listen 127.0.0.1:{port};
        location / {{ proxy_pass http://{upstream}; }}
    }}
}}
"""


class Nginx:
    """One nginx, serving ``127.0.0.1:port`` through the upstream its router writes."""

    def __init__(self, root: Path, versions: Versions, *, upstream: str = "web") -> None:
        self.root = root
        self.versions = versions
        self.upstream = upstream
        self.port = free_port()
        self.conf = root / "nginx.conf"
        self.include = root / "shipyard" / "web.conf"
        self.log = root / "error.log"
        self._proc: subprocess.Popen[bytes] | None = None
        (root / "temp").mkdir(parents=True, exist_ok=True)
        self.include.parent.mkdir(parents=True, exist_ok=True)

    def argv(self, *extra: str) -> list[str]:
        """nginx on this test's configuration (``-e``: never the system's error log)."""
        return [NGINX, "-p", str(self.root), "-e", str(self.log), "-c", str(self.conf), *extra]

    def router(self, pools: dict[str, list[str]] | None = None, **options: Any) -> RouterDef:
        """A ``RouterDef`` for this nginx; ``options`` go into its ``nginx:`` (``test=...``)."""
        nginx = {
            "include": str(self.include),
            "upstream": self.upstream,
            "test": self.argv("-t"),
            "reload": self.argv("-s", "reload"),
            **options,
        }
        return RouterDef.model_validate({"nginx": nginx, "pools": pools or self.versions.pools})

    def start(self) -> Nginx:
        router_binary(NGINX, "nginx")
        self.include.write_text(render_upstream("web", self.router(), {"stable": 100, "canary": 0}))
        self.conf.write_text(
            _NGINX_CONF.format(root=self.root, include=self.include, port=self.port, upstream=self.upstream)
        )
        with (self.root / "nginx.out").open("ab") as out:
            self._proc = subprocess.Popen(
                self.argv(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        _wait_for_port(self.port, self._proc, self.log)
        return self

    def stop(self) -> None:
        _stop(self._proc, signal.SIGQUIT)  # graceful: workers finish their requests
        self._proc = None

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def workers(self) -> set[int]:
        """The master's worker processes (old ones still draining included)."""
        assert self._proc is not None
        master, found = self._proc.pid, set()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    # the fields after the command's "(name)": state, then the parent's pid
                    stat = (entry / "stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                        found.add(int(entry.name))
        return found

    async def settled(self, before: set[int], timeout: float = 10.0) -> None:
        """Wait until the workers from ``before`` a reload are gone (drained) and new ones run."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self.workers()
            if now and not now & before:
                return
            await asyncio.sleep(0.02)
        raise TimeoutError(f"nginx still runs workers {sorted(self.workers() & before)} after a reload")


_HAPROXY_CONF = """\
global
    stats socket {root}/admin.sock mode 600 level admin
defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend web
    bind 127.0.0.1:{port}
    default_backend {backend}
backend {backend}
    balance roundrobin
{stable_servers}
    server canary {canary} weight 0
"""


class Haproxy:
    """One haproxy on ``127.0.0.1:port``; its backend's servers are ``stable`` and ``canary``
    (with ``stable_servers`` > 1, ``stable``, ``stable-2``, …: all the stable version)."""

    def __init__(
        self, root: Path, versions: Versions, *, backend: str = "web", stable_servers: int = 1
    ) -> None:
        self.root = root
        self.versions = versions
        self.backend = backend
        self.stable_servers = ["stable", *(f"stable-{n}" for n in range(2, stable_servers + 1))]
        self.port = free_port()
        self.socket = root / "admin.sock"
        self.log = root / "haproxy.log"
        self._proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)

    def router(self, pools: dict[str, list[str]] | None = None, **options: Any) -> RouterDef:
        haproxy = {"socket": str(self.socket), "backend": self.backend, **options}
        return RouterDef.model_validate(
            {"haproxy": haproxy, "pools": pools or {"stable": ["stable"], "canary": ["canary"]}}
        )

    def start(self) -> Haproxy:
        binary = router_binary(HAPROXY, "haproxy")
        conf = self.root / "haproxy.cfg"
        conf.write_text(
            _HAPROXY_CONF.format(
                root=self.root,
                port=self.port,
                backend=self.backend,
                stable_servers="\n".join(
                    f"    server {name} {self.versions.stable.target} weight 100"
                    for name in self.stable_servers
                ),
                canary=self.versions.canary.target,
            )
        )
        with self.log.open("ab") as out:
            self._proc = subprocess.Popen(
                [binary, "-db", "-f", str(conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        _wait_for_port(self.port, self._proc, self.log)
        # (the admin socket may come up a moment after the port: a test's first command needs it)
        deadline = time.monotonic() + 10
        while not self.socket.is_socket() and time.monotonic() < deadline:
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        _stop(self._proc, signal.SIGUSR1)  # soft stop
        self._proc = None

    def __enter__(self) -> Haproxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- load ---------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What answered: a count per version, and every failed request's reason."""

    versions: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.versions.values()) + len(self.failures)

    def share(self, version: str = "canary") -> float:
        """The percentage of all requests that ``version`` answered."""
        return 100 * self.versions[version] / self.total if self.total else 0.0


_REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


async def request(port: int, tally: Tally, timeout: float = 5.0) -> None:
    """One GET / on a connection of its own; its version or its failure goes in ``tally``."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(_REQUEST)
                answer = await reader.read()
            finally:
                writer.close()
                with contextlib.suppress(OSError):  # (closed here, not by the collector later)
                    await writer.wait_closed()
    except (OSError, TimeoutError) as exc:
        tally.failures.append(f"{type(exc).__name__}: {exc}")
        return
    head, _, body = answer.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1:2]
    if status != [b"200"]:
        tally.failures.append(f"{head[:60]!r} {body[:80]!r}")
    else:
        tally.versions[body.decode(errors="replace").strip()] += 1


async def send(port: int, count: int, *, concurrency: int = 16) -> Tally:
    """Send ``count`` requests, ``concurrency`` at a time, and tally them."""
    tally = Tally()
    left = iter(range(count))

    async def worker() -> None:
        for _ in left:
            await request(port, tally)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tally


class Load:
    """Requests without a pause, ``concurrency`` at a time, from entering the block to leaving it::

    async with Load(port) as load:
        await router.apply({"stable": 0, "canary": 100})
    assert load.tally.failures == []
    """

    def __init__(self, port: int, *, concurrency: int = 4) -> None:
        self.port = port
        self.concurrency = concurrency
        self.tally = Tally()
        self._tasks: list[asyncio.Task[None]] = []
        self._running = True

    async def _loop(self) -> None:
        while self._running:
            await request(self.port, self.tally)

    async def until(self, count: int, timeout: float = 10.0) -> None:
        """Wait until ``count`` more requests were answered (or failed)."""
        target = self.tally.total + count
        async with asyncio.timeout(timeout):
            while self.tally.total < target:
                await asyncio.sleep(0.01)

    async def __aenter__(self) -> Load:
        self._tasks = [asyncio.create_task(self._loop()) for _ in range(self.concurrency)]
        await self.until(self.concurrency)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._running = False
        await asyncio.gather(*self._tasks)
