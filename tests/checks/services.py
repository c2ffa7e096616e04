"""A small web service for checks to measure: ``/healthz`` and Prometheus ``/metrics``; and for
routers to route to: ``/`` answers its ``version`` (``stable``, ``canary``) with ``status``.

``WebService`` serves on a free loopback port from a thread of the test process (its own event
loop), so it keeps answering while a test blocks. ``/healthz`` answers with ``health_status``
after ``health_delay`` seconds with ``health_body`` (JSON, text when it is a string, or bytes as
they are, sent as ``health_content_type``).
``/metrics`` exposes the counter ``http_requests_total{code}``, which the service raises by
itself, ``requests_per_second`` worth of counts, as if it served traffic; ``fail(ratio)`` makes
that share of them ``500`` (so ``sum(rate(http_requests_total{code=~"5.."}[5s])) /
sum(rate(http_requests_total[5s]))`` rises to ``ratio``) and ``recover()`` ends it. Both series
exist from the start, so the error rate of a healthy service is 0, not an empty result.

The same controls over HTTP, for a service in another process
(``python -m tests.checks.services --port 8081``)::

    GET /control?fail=1           every request fails (fail=0.25: a quarter; fail=0: none)
    GET /control?status=503&delay=0.8&body={"status":"degraded"}
    GET /control?version_status=500  ``/`` answers 500 (its version is broken)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

TICK = 0.1


class WebService:
    def __init__(
        self,
        *,
        requests_per_second: float = 100.0,
        host: str = "127.0.0.1",
        port: int = 0,
        version: str = "stable",
    ) -> None:
        self.requests_per_second = requests_per_second
        #: what ``/`` answers, and with which status (500: this version is broken)
        self.version = version
        self.status = 200
        self.host, self.port = host, port
        #: what ``/healthz`` answers
        self.health_status = 200
        self.health_delay = 0.0
        self.health_body: Any = {"status": "ok", "checks": {"db": {"ok": True}}, "items": [{"state": "up"}]}
        self.health_content_type = "application/json"
        #: the share of counted requests that are 500s
        self.failing = 0.0
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "http_requests", "Requests served, by status code", ["code"], registry=self.registry
        )
        for code in ("200", "500"):
            self.requests.labels(code=code)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def target(self) -> str:
        """``host:port``, as Prometheus scrapes it."""
        return f"{self.host}:{self.port}"

    def fail(self, ratio: float = 1.0) -> None:
        self.failing = ratio

    def recover(self) -> None:
        self.failing = 0.0

    # --- serving ---

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self._version)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_route("*", "/control", self._control)
        return app

    async def _version(self, request: web.Request) -> web.Response:
        return web.Response(status=self.status, text=self.version)

    async def _healthz(self, request: web.Request) -> web.Response:
        if self.health_delay:
            await asyncio.sleep(self.health_delay)
        if isinstance(self.health_body, bytes):
            headers = {"Content-Type": self.health_content_type}
            return web.Response(status=self.health_status, body=self.health_body, headers=headers)
        if isinstance(self.health_body, str):
            return web.Response(status=self.health_status, text=self.health_body)
        return web.json_response(self.health_body, status=self.health_status)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _control(self, request: web.Request) -> web.Response:
        query = request.query
        if "fail" in query:
            self.fail(float(query["fail"]))
        if "status" in query:
            self.health_status = int(query["status"])
        if "version_status" in query:
            self.status = int(query["version_status"])
        if "delay" in query:
            self.health_delay = float(query["delay"])
        if "body" in query:
            self.health_body = json.loads(query["body"])
        return web.json_response(
            {"fail": self.failing, "status": self.health_status, "delay": self.health_delay}
        )

    async def _count(self) -> None:
        while True:
            served = self.requests_per_second * TICK
            self.requests.labels(code="500").inc(served * self.failing)
            self.requests.labels(code="200").inc(served * (1 - self.failing))
            await asyncio.sleep(TICK)

    async def serve(self, ready: threading.Event | None = None) -> None:
        """Serve until ``stop()``."""
        self._stop = asyncio.Event()
        runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self.port = int(runner.addresses[0][1])
        counting = asyncio.create_task(self._count())
        if ready is not None:
            ready.set()
        try:
            await self._stop.wait()
        finally:
            counting.cancel()
            await runner.cleanup()

    # --- in a thread ---

    def start(self) -> WebService:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_until_complete, args=(self.serve(ready),), daemon=True
        )
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the test web service did not start within 10s")
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None or self._stop is None:
            return
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> WebService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--requests-per-second", type=float, default=100.0)
    args = parser.parse_args()
    service = WebService(requests_per_second=args.requests_per_second, host=args.host, port=args.port)
    print(f"serving on {service.url}: /healthz /metrics /control", flush=True)
    asyncio.run(service.serve())


if __name__ == "__main__":
    main()
