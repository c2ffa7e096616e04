"""One version of the app, for the canary walkthrough in examples/canary/README.md.

Two copies run behind nginx: the ``stable`` pool on :8101 and the ``canary`` pool on :8102::

    python examples/canary/service.py --pool stable --port 8101 --version 1.0.0

    GET  /                         "stable 1.0.0": which pool and version answered
    GET  /metrics                  http_requests_total{code="200"|"500"}, for Prometheus
    POST /deploy?version=2.0.0     what the pipeline's jobs call; it also ends a /break
    POST /break?share=0.5          fail that share of requests from now on (default 1: all)

Unlike examples/health/service.py it counts only the requests it really serves (those nginx
sends it), so the canary's error rate is the error rate of the traffic it takes. A version
with ``bad`` in its name fails half its requests, so a bad release can be deployed on purpose.
Both counters exist from the start: a version that serves and fails nothing has an error rate
of 0, not an empty result.

Standalone on purpose (aiohttp and prometheus_client only): copy it, break it, run more.
"""

from __future__ import annotations

import argparse
import random

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

#: the share of requests a version with "bad" in its name fails
BAD_SHARE = 0.5


class Service:
    def __init__(self, *, pool: str, version: str) -> None:
        self.pool = pool
        self.version = version
        #: the share of requests that fail (set by /break, or by deploying a bad version)
        self.failing = 0.0
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "http_requests", "Requests served, by status code", ["code"], registry=self.registry
        )
        for code in ("200", "500"):
            self.requests.labels(code=code)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self._index)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/deploy", self._deploy)
        app.router.add_post("/break", self._break)
        return app

    async def _index(self, request: web.Request) -> web.Response:
        if self.failing and random.random() < self.failing:
            self.requests.labels(code="500").inc()
            return web.Response(text=f"{self.pool} {self.version} failed\n", status=500)
        self.requests.labels(code="200").inc()
        return web.Response(text=f"{self.pool} {self.version}\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _deploy(self, request: web.Request) -> web.Response:
        version = request.query.get("version", "").strip()
        if not version:
            return web.json_response(
                {"error": "version: give the version to deploy, e.g. ?version=2.0.0"}, status=400
            )
        previous, self.version = self.version, version
        self.failing = BAD_SHARE if "bad" in version.lower() else 0.0
        print(f"{self.pool}: deployed {version} (was {previous}), failing {self.failing:.0%}", flush=True)
        return web.json_response({"pool": self.pool, "version": version, "previous": previous})

    async def _break(self, request: web.Request) -> web.Response:
        try:
            share = float(request.query.get("share", "1"))
        except ValueError:
            share = -1.0
        if not 0.0 <= share <= 1.0:
            return web.json_response({"error": "share: a number from 0 to 1, e.g. ?share=0.5"}, status=400)
        self.failing = share
        print(f"{self.pool}: broken, failing {share:.0%} of requests", flush=True)
        return web.json_response({"pool": self.pool, "version": self.version, "failing": share})


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pool", required=True, help="the pool this copy serves in: stable or canary")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--version", default="1.0.0", help="the version running at start (1.0.0)")
    args = parser.parse_args()
    service = Service(pool=args.pool, version=args.version)
    print(f"{args.pool} {args.version} serving on http://{args.host}:{args.port}", flush=True)
    web.run_app(service.app(), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
