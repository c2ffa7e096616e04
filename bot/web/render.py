"""Pages: Jinja2 templates (autoescaped: log text and every string people typed are escaped) and
the headers every page carries: a strict Content-Security-Policy (nothing but Shipyard's own
files, no inline script or style), no framing, no sniffing, no caching of what a session sees."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from bot.api.problems import REFUSAL_STATUS
from bot.api.routing import _clean
from core.duration import format_duration
from core.errors import CommandRefused

HERE = Path(__file__).parent
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _when(at: datetime | None) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if at is not None else ""


def _took(start: datetime | None, end: datetime | None) -> str:
    if start is None:
        return ""
    seconds = ((end or datetime.now(UTC)) - start).total_seconds()
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def run_link(ref: str) -> str:
    """A run's page from its ``pipeline#number``."""
    pipeline, _, number = ref.rpartition("#")
    return f"/ui/runs/{pipeline}/{number}"


def _minutes(seconds: float | None) -> str:
    """A duration as people read it (``n/a``: nothing to measure)."""
    return format_duration(seconds) if seconds is not None else "n/a"


TEMPLATES.globals["minutes"] = _minutes
TEMPLATES.filters["when"] = _when
TEMPLATES.filters["run_link"] = run_link
TEMPLATES.globals["took"] = _took


def page(template: str, status: int = 200, **context: Any) -> web.Response:
    """``template`` rendered as an HTML page with the security headers."""
    body = TEMPLATES.get_template(template).render(**context)
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8", headers=HEADERS)


def see_other(location: str) -> web.Response:
    """Go on to ``location`` (after a form: the browser GETs it)."""
    return web.Response(status=303, headers={"Location": location, **HEADERS})


def message(title: str, text: str, status: int, viewer: Any = None) -> web.Response:
    """A page that says what happened and what to do: refusals, missing runs, spent links."""
    return page("message.html", status, title=title, text=text, viewer=viewer)


class Answer(Exception):
    """Raised with the page to answer instead (a refusal deep in a handler)."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


@web.middleware
async def answers(request: web.Request, handler: Any) -> web.StreamResponse:
    """Pages under /ui/ answer an ``Answer`` raised by their handler, and a refusal from below
    with a page saying why (never a traceback); a path or query a database cannot store (NUL, a
    lone surrogate) with a 400 page before it reaches one, as the REST API does."""
    if not _clean(request.path) or not all(_clean(k + v) for k, v in request.query.items()):
        return message("Not a page", "Addresses may not hold NUL characters or broken UTF-8.", 400)
    try:
        response: web.StreamResponse = await handler(request)
    except Answer as answer:
        return answer.response
    except CommandRefused as exc:  # (what a handler did not turn into a page itself)
        return message("Refused", exc.message, REFUSAL_STATUS.get(exc.kind, 409))
    return response
