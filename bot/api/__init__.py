"""The REST API under ``/api/v1``: endpoint modules register on ``bot.api.spec.API``; ``setup``
mounts them with the OpenAPI document and its reference page."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from importlib import resources

from aiohttp import web

from bot.api import artifacts, deploys, environments, locks, pipelines, runs, schedules, webhooks  # noqa: F401  (they register their operations)
from bot.api.gateway import ApiGateway
from bot.api.problems import Problem
from bot.api.routing import PREFIX
from bot.api.spec import API
from core.errors import Conflict

log = logging.getLogger(__name__)
GATEWAY = web.AppKey("api_gateway", ApiGateway)


def setup(app: web.Application) -> ApiGateway:
    gateway = ApiGateway()
    app[GATEWAY] = gateway
    API.mount(app, gateway)
    document = json.dumps(API.openapi())
    page = resources.files("bot.api").joinpath("reference.html").read_text(encoding="utf-8")

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(text=document, content_type="application/json")

    async def reference(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    app.router.add_get(PREFIX + "/openapi.json", openapi)
    app.router.add_get(PREFIX + "/docs", reference)
    app.middlewares.append(problems)
    return gateway


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Under /api, aiohttp's own errors (no such route, wrong method, body too large) become
    problem documents too, and nothing a client sends can produce a bare 500."""
    if not request.path.startswith("/api/"):
        return await handler(request)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        detail = exc.text or exc.reason
        if exc.status == 404:
            detail = f"no such endpoint: {request.method} {request.path} (see {PREFIX}/docs)"
        elif exc.status == 405:
            allowed = exc.headers.get("Allow", "")
            detail = f"{request.method} is not allowed here (allowed: {allowed})"
        problem = Problem(exc.status, detail)
        problem.headers.update({k: v for k, v in exc.headers.items() if k in ("Allow",)})
        return problem.response(request.path)
    except Conflict as exc:  # lost every retry against concurrent writers
        return Problem(409, f"{exc.message}", title="Busy").response(request.path)
    except Exception:
        log.exception("unexpected error answering %s %s", request.method, request.path)
        return Problem(500, "an unexpected error; it has been logged").response(request.path)
