"""``GET /metrics``: the Prometheus text format, protected.

Either ``SHIPYARD_METRICS_TOKEN`` (a bearer token the scraper sends; compared in constant time)
on the main port, or ``SHIPYARD_METRICS_PORT``: a port of its own serving only ``/metrics``
(bind it where only the scraper reaches; a token, if set too, is asked there as well). With
neither, the main port answers 404 rather than publish the service's activity to anyone.

The counters are the process's (``bot.metrics.REGISTRY``); each server adds the gauges of what
is going on now, read at scrape time (``storage.gauges``), and whatever else is registered with
``Exporter.add`` (the place for gauges such as DORA's keys: a collector, and an async refresh
run before each scrape).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from bot import metrics
from bot.api.problems import Problem, unauthorized
from bot.dora_metrics import DoraCollector
from core.errors import DatabaseUnreachable
from storage.gauges import Live, live
from storage.reads import Reads

if TYPE_CHECKING:
    from bot.bootstrap import Shipyard
    from bot.config import Settings

log = logging.getLogger(__name__)

Refresh = Callable[[], Awaitable[None]]

#: the text format every Prometheus reads (2.x as well as 3.x); the names need no escaping
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class LiveCollector(Collector):
    """The gauges of what is going on now, as last read before the scrape; every environment
    configured or deployed to by a pipeline is listed, at 0 when nothing queues or deploys there."""

    def __init__(self, environments: Iterable[str]) -> None:
        self.environments = set(environments)
        self.now: Live | None = None

    def collect(self) -> Iterable[GaugeMetricFamily]:
        now = self.now
        if now is None:  # (the database did not answer this scrape)
            return
        queued = GaugeMetricFamily(
            "shipyard_environment_queued_runs", "Runs waiting for the environment", labels=["environment"]
        )
        deploying = GaugeMetricFamily(
            "shipyard_environment_running_deployments",
            "Stages deploying to the environment now (running, rolling out or verifying)",
            labels=["environment"],
        )
        for env in sorted({*self.environments, *now.queued, *now.deploying}):
            queued.add_metric([env], now.queued.get(env, 0))
            deploying.add_metric([env], now.deploying.get(env, 0))
        running = GaugeMetricFamily(
            "shipyard_runner_running_jobs", "Jobs each runner is running now", labels=["runner"]
        )
        for runner, n in sorted(now.running.items()):
            running.add_metric([runner], n)
        yield from (queued, deploying, running)


class Exporter:
    """One server's ``/metrics``: the process's counters, then its scrape-time gauges."""

    def __init__(self, shipyard: Shipyard) -> None:
        self.shipyard = shipyard
        self.registry = CollectorRegistry(auto_describe=False)
        self.live = LiveCollector(shipyard.settings.environments.root)
        self.reads = Reads(shipyard.store)
        self.registry.register(self.live)
        self._refreshes: list[Refresh] = [self._read_live]
        self.dora = DoraCollector(self.reads)
        self.add(self.dora, self._read_dora)

    def add(self, collector: Collector, refresh: Refresh | None = None) -> None:
        """Export ``collector`` too; ``refresh``, if given, runs before each scrape (reads what
        the collector reports, off the event loop through ``orchestrator.db``)."""
        self.registry.register(collector)
        if refresh is not None:
            self._refreshes.append(refresh)

    def _live(self) -> Live:
        self.live.environments.update(self.reads.environment_names())  # (new versions only decoded)
        return live(self.shipyard.store)

    async def _read_live(self) -> None:
        try:
            self.live.now = await self.shipyard.orchestrator.db(self._live)
        except DatabaseUnreachable:  # (said once by the engine's health): counters still go out
            self.live.now = None

    async def _read_dora(self) -> None:
        if self.dora.due:  # (a trip that does not reach the database would end an outage)
            await self.shipyard.orchestrator.db(self.dora.read)

    async def render(self) -> bytes:
        for refresh in self._refreshes:
            await refresh()
        return generate_latest(metrics.REGISTRY) + generate_latest(self.registry)

    def attach(self) -> None:
        """Start counting what this server's engine commits."""
        self.shipyard.store.observers.append(metrics.on_commit)
        self.shipyard.orchestrator.on_commit.append(metrics.group_committed)

    def detach(self) -> None:
        self.shipyard.store.observers.remove(metrics.on_commit)
        self.shipyard.orchestrator.on_commit.remove(metrics.group_committed)


EXPORTER = web.AppKey("metrics", Exporter)


def authorized(request: web.Request, settings: Settings) -> None:
    """Raise a 401 problem unless the request carries the metrics token (when one is set)."""
    if settings.metrics_token is None:
        return
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise unauthorized("send the metrics token: Authorization: Bearer <SHIPYARD_METRICS_TOKEN>")
    expected = settings.metrics_token.get_secret_value().encode()
    # (bytes that are not UTF-8 arrive as surrogates: back to the bytes sent, never an error)
    if not hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), expected):
        raise unauthorized("the metrics token is not valid")


def handler(settings: Settings, *, on_metrics_port: bool) -> Callable[[web.Request], Awaitable[web.Response]]:
    """``GET /metrics`` for the main port or for the metrics port."""

    async def get_metrics(request: web.Request) -> web.Response:
        try:
            if not on_metrics_port and settings.metrics_port is not None:
                port = settings.metrics_port
                raise Problem(404, f"metrics are served on port {port} (SHIPYARD_METRICS_PORT)")
            if not on_metrics_port and settings.metrics_token is None:
                raise Problem(404, "metrics are off: set SHIPYARD_METRICS_TOKEN or SHIPYARD_METRICS_PORT")
            authorized(request, settings)
        except Problem as problem:
            return problem.response(request.path)
        body = await request.app[EXPORTER].render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    return get_metrics


class MetricsPort:
    """The separate port (``SHIPYARD_METRICS_PORT``): an application of its own serving only
    ``/metrics``, sharing the main application's exporter."""

    def __init__(self, settings: Settings, exporter: Exporter) -> None:
        self.settings = settings
        self.app = web.Application()
        self.app[EXPORTER] = exporter
        self.app.router.add_get("/metrics", handler(settings, on_metrics_port=True))
        self.runner = web.AppRunner(self.app, access_log=None)

    async def start(self) -> None:
        assert self.settings.metrics_port is not None
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.settings.host, self.settings.metrics_port)
        await site.start()

    async def stop(self) -> None:
        await self.runner.cleanup()
