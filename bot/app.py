"""The aiohttp application that ``shipyard serve`` runs: health endpoints, the REST API under
``/api/v1`` (``bot.api``); the Slack endpoints mount here too. Shipyard itself lives on the
app under a typed key and is started and stopped by ``cleanup_ctx`` (no globals)."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from bot import api, logs, slack, tracing
from bot import web as web_view
from bot.api import hooks
from bot.api.problems import RETRY_AFTER_S
from bot.backend import Backend
from bot.bootstrap import Shipyard, build
from bot.config import Settings
from bot.housekeeping import HOUSEKEEPING, Housekeeping
from bot.locks_keeper import KEEPER, LockKeeper
from bot.metrics_http import EXPORTER, Exporter, MetricsPort, handler
from bot.scheduler import ScheduleLoop
from bot.webhooks.service import WEBHOOKS, Config, Webhooks
from core.analysis import AnalysisStatus, HealthChange
from core.errors import DatabaseUnreachable
from core.runtime.analyses import AnalysisLoop
from core.runtime.rollouts import RolloutDriver
from core.runtime.verification import verdicts_to
from storage.analyses import AnalysisStore
from storage.rollouts import RolloutStore

SHIPYARD = web.AppKey("shipyard", Shipyard)
CLOCK = web.AppKey("clock", ScheduleLoop)
#: the analysis loop, when an environment declares checks
ANALYSES = web.AppKey("analyses", AnalysisLoop)
#: the router driver, when an environment declares routers
ROLLOUTS = web.AppKey("rollouts", RolloutDriver)


def rollout_driver(running: Shipyard) -> RolloutDriver | None:
    """The loop that drives the environments' routers for rollouts (``core.runtime.rollouts``),
    or None when no environment declares a router."""
    settings = running.settings
    if not any(policy.routers for policy in settings.environments.root.values()):
        return None
    workdir = settings.work_dir.resolve() / "routers"
    workdir.mkdir(parents=True, exist_ok=True)
    return RolloutDriver(
        RolloutStore(running.store),
        settings.environments,
        handle=running.orchestrator.handle,
        db=running.orchestrator.db,
        clock=running.service.clock,
        workdir=workdir,
    )


def analysis_loop(running: Shipyard, unfinished: bool = False) -> AnalysisLoop | None:
    """The loop that measures the environments' checks (``core.runtime.analyses``), or None when
    no environment declares any and no verification is ``unfinished`` (one started before the
    checks left the configuration is still judged: it ends inconclusive, for a person to decide,
    instead of holding its environment for ever)."""
    settings = running.settings
    if not any(policy.checks for policy in settings.environments.root.values()) and not unfinished:
        return None
    workdir = settings.work_dir.resolve() / "checks"
    workdir.mkdir(parents=True, exist_ok=True)
    analyses = AnalysisStore(running.store)
    orchestrator = running.orchestrator

    async def end(analysis_id: str, status: AnalysisStatus, reason: str) -> bool:
        return await orchestrator.db(
            analyses.end, analysis_id, status, reason, "shipyard", running.service.clock()
        )

    async def health_changed(change: HealthChange) -> None:
        # the change is in the event log already (its transaction appended it): the Slack
        # notifier and the webhook outbox follow the log, so wake them rather than post from
        # here; the engine's timers look again at queues an unhealthy environment held back
        orchestrator.notify()
        orchestrator.wake()

    return AnalysisLoop(
        analyses,
        settings.environments,
        db=orchestrator.db,
        workdir=workdir,
        on_verdict=verdicts_to(orchestrator.handle, end),
        on_health_change=health_changed,
    )


def _traces(app: web.Application) -> Callable[[Backend], tracing.Follower]:
    """Span every HTTP request; the returned factory builds the run-span follower."""
    from bot import otel  # only here: without the extra nothing of OpenTelemetry is imported

    span_processor = otel.processor()
    made = otel.provider(span_processor)
    otel.install(made)  # (the Slack client's spans find it through the global)
    tracer = made.get_tracer("shipyard")
    app.middlewares.append(otel.http_middleware(tracer))
    commands = otel.command_span(tracer)

    def follower(backend: Backend) -> tracing.Follower:
        backend.traced = commands
        return otel.RunTraces(backend, span_processor)

    return follower


def create_app(settings: Settings, shipyard: Shipyard | None = None) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes)
    app.on_response_prepare.append(logs.request_id)
    gateway = api.setup(app)
    hooks.setup(app, gateway)
    web_view.setup(app, gateway)
    slack_lifecycle = slack.setup(app, settings)
    traces = _traces(app) if tracing.wanted() else None

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        running = shipyard or build(settings)
        app[SHIPYARD] = running
        exporter = app[EXPORTER] = Exporter(running)
        exporter.attach()
        await running.start()
        metrics_port = MetricsPort(settings, exporter) if settings.metrics_port is not None else None
        if metrics_port is not None:
            await metrics_port.start()
        gateway.bind(running)
        await gateway.start()
        clock = ScheduleLoop(gateway, settings.schedule_owner)
        app[CLOCK] = clock
        await clock.start()
        keeper = LockKeeper(gateway, settings)
        app[KEEPER] = keeper
        await keeper.start()
        webhooks = Webhooks(gateway, Config.of(settings))
        app[WEBHOOKS] = webhooks
        await webhooks.start(run=settings.webhook_deliver)
        housekeeping = Housekeeping(gateway, settings)
        app[HOUSEKEEPING] = housekeeping
        await housekeeping.start()
        unfinished = await running.orchestrator.db(AnalysisStore(running.store).unfinished)
        analyses = analysis_loop(running, unfinished)
        if analyses is not None:
            app[ANALYSES] = analyses
            await analyses.start()
        rollouts = rollout_driver(running)
        if rollouts is not None:
            app[ROLLOUTS] = rollouts
            await rollouts.start()
        run_traces = traces(gateway) if traces is not None else None
        if run_traces is not None:
            await run_traces.start()
        chat = slack_lifecycle(running) if slack_lifecycle is not None else None
        if chat is not None:
            await anext(chat)
        # everything built so far lives as long as the process: keep the collector from
        # re-scanning it, or a full collection stalls every request for ~100 ms
        gc.collect()
        gc.freeze()
        yield
        if chat is not None:
            await anext(chat, None)
        if run_traces is not None:
            await run_traces.stop()
        if rollouts is not None:
            await rollouts.stop()
        if analyses is not None:
            await analyses.stop()
        await housekeeping.stop()
        await webhooks.stop()
        await keeper.stop()
        await clock.stop()
        await gateway.close()
        if metrics_port is not None:
            await metrics_port.stop()
        await running.stop()
        exporter.detach()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", handler(settings, on_metrics_port=False))
    return app


async def healthz(request: web.Request) -> web.Response:
    """The process is up and serving HTTP."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """The database answers and the engine's loops are running. The ping reports to the same
    ``health`` as everything else, so an outage it finds is the one the log speaks of. Slack is
    reported (``slack``: its mode, and in Socket Mode the connection's state) but never makes
    the service unready: runs, schedules and the REST API go on without it."""
    running = request.app[SHIPYARD]
    health = running.orchestrator.health
    try:
        await running.orchestrator.db(running.store.ping)
    except DatabaseUnreachable:
        return _unready(f"database unreachable for {health.down_for:.1f} s: {health.error}")
    except Exception as exc:
        return _unready(f"database: {exc}")
    if not running.orchestrator.running:
        return _unready("engine stopped")
    return web.json_response(
        {
            "status": "ready",
            "runner": running.runner.name if running.runner else None,
            "slack": request.app[slack.SLACK].detail(),
        }
    )


def _unready(reason: str) -> web.Response:
    return web.json_response(
        {"status": "unavailable", "reason": reason},
        status=503,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )
