"""Signing in to the web view and who is signed in (``storage.web`` keeps links and sessions).

Two ways in: a one-time link from ``/deploy login`` (the page it opens asks for one press, so a
link previewer that fetches it spends nothing), or an API token pasted into the sign-in form.
The session cookie is ``HttpOnly``, ``SameSite=Lax`` and ``Secure`` when served over https; each
session has its CSRF token, which every form carries and every POST must send back."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from urllib.parse import quote, urlsplit

from aiohttp import web

from bot.api.gateway import ApiGateway
from bot.backend import now
from bot.bootstrap import Shipyard
from bot.web.render import Answer, message, page, see_other
from core.access import Principal
from storage.web import LinkRefused, WebSession, WebSessions

COOKIE = "shipyard_session"


class WebState:
    """What the pages reach: the API's gateway (bound once the service has started) and the
    sessions kept in its database."""

    def __init__(self, gateway: ApiGateway) -> None:
        self.gateway = gateway

    @cached_property
    def sessions(self) -> WebSessions:
        return web_sessions(self.gateway.shipyard)


def web_sessions(shipyard: Shipyard) -> WebSessions:
    return WebSessions(shipyard.store, timedelta(hours=shipyard.settings.web_session_hours))


WEB = web.AppKey("web", WebState)


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who a page is for: the principal with what it holds now, and the session's form token."""

    principal: Principal
    csrf: str
    via: str

    @property
    def name(self) -> str:
        return self.principal.name


async def viewer(request: web.Request) -> Viewer | None:
    """The signed-in person, with the roles they hold now (a revoked role or token counts at
    once), or None. A cookie Shipyard did not set (not ASCII: other bytes arrive as surrogates,
    which cannot be hashed) names no session."""
    cookie = request.cookies.get(COOKIE)
    if not cookie or not cookie.isascii():
        return None
    g = request.app[WEB].gateway
    session: WebSession | None = await g.read(request.app[WEB].sessions.session, cookie, now(), quick=True)
    if session is None:
        return None
    principal = await g.read(g.directory.standing, session.principal, now(), quick=True)
    if principal is None:  # every API token of theirs was revoked
        return None
    return Viewer(principal, session.csrf, session.via)


async def required(request: web.Request) -> Viewer:
    """The signed-in person; anyone else is sent to sign in, and back here after."""
    found = await viewer(request)
    if found is None:
        raise web.HTTPSeeOther(f"/ui/sign-in?next={quote(request.rel_url.path_qs, safe='/')}")
    return found


async def checked_form(request: web.Request) -> tuple[Viewer, dict[str, str]]:
    """A POSTed form from a signed-in page: its fields, after its CSRF token and origin are
    checked (a missing or wrong one changes nothing and is refused with 403)."""
    who = await viewer(request)
    if who is None:
        raise web.HTTPSeeOther("/ui/sign-in")
    form = {k: str(v) for k, v in (await request.post()).items()}
    if not hmac.compare_digest(form.get("csrf", ""), who.csrf) or not _same_origin(request):
        state = request.app[WEB]
        why = "a form without this session's CSRF token, or from another origin"
        await state.gateway.write(state.sessions.refused, who.name, "web_form", request.path, why, now())
        stale = "This form is stale or came from another site: reload the page and try again."
        raise Answer(message("Refused", stale, 403, who))
    return who, form


def _same_origin(request: web.Request) -> bool:
    """Whether a POST came from Shipyard's own pages: the browser's ``Origin`` is this server as
    the request reached it, or its public address (behind a proxy that ends TLS)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    public = urlsplit(request.app[WEB].gateway.shipyard.settings.public_url or "")
    return origin in (f"{request.scheme}://{request.host}", f"{public.scheme}://{public.netloc}")


def _with_cookie(
    response: web.StreamResponse, request: web.Request, cookie: str, lifetime: timedelta
) -> None:
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=int(lifetime.total_seconds()),
        path="/ui",
        httponly=True,
        secure=request.secure
        or (request.app[WEB].gateway.shipyard.settings.public_url or "").startswith("https://"),
        samesite="Lax",
    )


def _next(target: str) -> str:
    """Where to go after signing in: a page of ours only."""
    return target if target.startswith("/ui/") and not target.startswith("//") else "/ui/runs"


async def sign_in_page(request: web.Request) -> web.Response:
    return page("sign_in.html", viewer=None, next=_next(request.query.get("next", "")), error="")


async def sign_in_with_token(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    token, target = str(form.get("token", "")).strip(), _next(str(form.get("next", "")))
    if not _same_origin(request):
        return message("Refused", "Sign in from Shipyard's own page.", 403)
    g = request.app[WEB].gateway
    principal = await g.authenticate(token) if token else None
    if principal is None:
        reason = "an API token that is not valid"
        await g.write(
            request.app[WEB].sessions.refused, "unknown", "web_sign_in", "/ui/sign-in", reason, now()
        )
        error = "That token is not valid (or was revoked): paste an API token, or type /deploy login in Slack"
        return page("sign_in.html", 401, viewer=None, next=target, error=error)
    sessions = request.app[WEB].sessions
    signed = await g.write(sessions.sign_in_with_token, principal.name, now())
    response = see_other(target)
    _with_cookie(response, request, signed.cookie, sessions.lifetime)
    return response


async def login_link(request: web.Request) -> web.Response:
    """The page a login link opens: one press signs in (the link is spent by the POST only)."""
    return page("login.html", viewer=None, secret=request.match_info["secret"])


async def use_login_link(request: web.Request) -> web.StreamResponse:
    if not _same_origin(request):
        return message("Refused", "Sign in from Shipyard's own page.", 403)
    sessions = request.app[WEB].sessions
    try:
        signed = await request.app[WEB].gateway.write(sessions.redeem, request.match_info["secret"], now())
    except LinkRefused as exc:
        return message(
            "Link not valid", f"{exc.reason.capitalize()}. Type `/deploy login` in Slack for a new one.", 410
        )
    response = see_other("/ui/runs")
    _with_cookie(response, request, signed.cookie, sessions.lifetime)
    return response


async def sign_out(request: web.Request) -> web.StreamResponse:
    await checked_form(request)
    state = request.app[WEB]
    await state.gateway.write(state.sessions.sign_out, request.cookies.get(COOKIE, ""), now())
    response = see_other("/ui/sign-in")
    response.del_cookie(COOKIE, path="/ui")
    return response
