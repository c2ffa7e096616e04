"""The app being deployed, for the worked example in examples/health/README.md.

A tiny web service standing in for a real one, so that Shipyard's checks have something to
measure::

    python examples/health/service.py --port 8081

    GET  /healthz                {"status": "ok", "version": "1.0.0"}
    GET  /metrics                http_requests_total{code="200"|"500"}, for Prometheus
    POST /deploy?version=2.0.0   what a pipeline's deploy job calls

It serves no real traffic: it counts ``--requests-per-second`` requests by itself (20 by
default), as if users were calling it, and a share of them fail with 500 depending on the
version deployed. A version whose name contains ``bad`` fails 30 % of them; any other fails
0.2 %, so its error rate is small but not zero. ``/healthz`` answers ``ok`` either way: the
process is up, and only the error rate shows what users get (which is why the example checks
both). Both counters exist from the start, so the error rate of a healthy service is 0, not an
empty result.

Standalone on purpose (aiohttp and prometheus_client only): copy it, break it, run several.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

#: how often the counters move, in seconds
TICK = 0.1
#: the share of requests a version fails: one with "bad" in its name, and any other
BAD_ERROR_SHARE = 0.3
GOOD_ERROR_SHARE = 0.002


def error_share(version: str) -> float:
    return BAD_ERROR_SHARE if "bad" in version.lower() else GOOD_ERROR_SHARE


class Service:
    def __init__(self, *, version: str = "0.0.0", requests_per_second: float = 20.0) -> None:
        self.version = version
        self.requests_per_second = requests_per_second
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "http_requests", "Requests served, by status code", ["code"], registry=self.registry
        )
        for code in ("200", "500"):
            self.requests.labels(code=code)
        #: requests and failures not yet counted (counts are whole; what is left carries over)
        self._due = 0.0
        self._failures_due = 0.0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/deploy", self._deploy)
        app.cleanup_ctx.append(self._counting)
        return app

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "version": self.version})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _deploy(self, request: web.Request) -> web.Response:
        version = request.query.get("version", "").strip()
        if not version:
            return web.json_response(
                {"error": "version: give the version to deploy, e.g. ?version=1.0.0"}, status=400
            )
        previous, self.version = self.version, version
        print(f"deployed {version} (was {previous}): {error_share(version):.1%} of requests fail", flush=True)
        return web.json_response(
            {"version": version, "previous": previous, "error_share": error_share(version)}
        )

    def count(self, seconds: float) -> None:
        """Count ``seconds`` worth of requests, failing the deployed version's share of them."""
        self._due += self.requests_per_second * seconds
        served = int(self._due)
        self._due -= served
        self._failures_due += served * error_share(self.version)
        failed = min(served, int(self._failures_due))
        self._failures_due -= failed
        self.requests.labels(code="500").inc(failed)
        self.requests.labels(code="200").inc(served - failed)

    async def _counting(self, app: web.Application) -> AsyncIterator[None]:
        """Count requests in the background for as long as the app runs."""

        async def tick() -> None:
            while True:
                self.count(TICK)
                await asyncio.sleep(TICK)

        task = asyncio.create_task(tick())
        yield
        task.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--version", default="0.0.0", help="the version running at start (default 0.0.0)")
    parser.add_argument("--requests-per-second", type=float, default=20.0)
    args = parser.parse_args()
    service = Service(version=args.version, requests_per_second=args.requests_per_second)
    print(
        f"version {service.version} serving on http://{args.host}:{args.port}: "
        "GET /healthz, GET /metrics, POST /deploy?version=X",
        flush=True,
    )
    web.run_app(service.app(), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
