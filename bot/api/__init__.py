"""The REST API under ``/api/v1``: endpoint modules register on ``bot.api.spec.API``; ``setup``
mounts them with the OpenAPI document and its reference page."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from importlib import resources

from aiohttp import web
from aiohttp.typedefs import Middleware

from bot.api import (  # (imported for the operations they register)
    artifacts,
    deploys,
    environments,
    locks,
    pipelines,
    runner,
    runners,
    runs,
    schedules,
    secrets,
    webhooks,
)
from bot.api.gateway import ApiGateway
from bot.api.problems import Problem, unavailable
from bot.api.routing import PREFIX, SAFE_METHODS, audit_request
from bot.api.spec import API
from core.access import Principal
from core.errors import Conflict, DatabaseUnreachable

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
    app.middlewares.append(problems(gateway))
    return gateway


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def problems(gateway: ApiGateway) -> Middleware:
    """Under /api, aiohttp's own errors (no such route, wrong method) become problem documents
    too, nothing a client sends can produce a bare 500, and a mutating request answered here is
    audited like any other (the operations audit the requests they answer themselves)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/api/"):
            return await handler(request)
        outage = False
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
            response = problem.response(request.path)
        except Conflict as exc:  # lost every retry against concurrent writers
            response = Problem(409, f"{exc.message}", title="Busy").response(request.path)
        except DatabaseUnreachable as exc:  # (the outage is logged once, by the engine's health)
            response = unavailable(exc.message).response(request.path)
            outage = True
        except Exception:
            log.exception("unexpected error answering %s %s", request.method, request.path)
            response = Problem(500, "an unexpected error; it has been logged").response(request.path)
        # an answer the database could not be reached for is not audited: there is nowhere to
        # write it, and nothing was done
        if request.method not in SAFE_METHODS and not outage:
            await audit_request(gateway, _action(request), request, await _caller(request, gateway), response)
        return response

    return middleware


def _action(request: web.Request) -> str:
    """The operation asked for, or what was wrong with the route."""
    match = request.match_info
    if match.http_exception is not None:
        return "method_not_allowed" if match.http_exception.status == 405 else "no_such_endpoint"
    return getattr(match.handler, "__name__", "request")


async def _caller(request: web.Request, gateway: ApiGateway) -> Principal | None:
    """Who sent ``request``, for the audit log: the token's principal, if it names one."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    try:
        return await gateway.authenticate(token.strip())
    except DatabaseUnreachable:
        return None  # (and the audit entry cannot be written either; ``audit_request`` says so)
    except Exception:  # the answer stands without a name; the entry says "(unauthenticated)"
        log.exception("could not authenticate %s %s for the audit log", request.method, request.path)
        return None
