"""RFC 9457 problem details: every 4xx and 5xx the API sends is ``application/problem+json``."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

PROBLEM_TYPE = "application/problem+json"

TITLES = {
    400: "Bad request",
    401: "Authentication required",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    409: "Conflict",
    412: "Precondition failed",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    500: "Internal server error",
    503: "Service unavailable",
}

#: how long a client is asked to wait (``Retry-After``, seconds) while the database is unreachable
RETRY_AFTER_S = 5
#: an engine refusal's kind (``CommandRefused.kind``) as an HTTP status
REFUSAL_STATUS = {"not_found": 404, "forbidden": 403, "invalid": 422, "conflict": 409}


class Problem(Exception):
    """Raise anywhere in a handler to answer with a problem document."""

    def __init__(self, status: int, detail: str, *, title: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title or TITLES.get(status, "Error")
        self.extra = extra
        self.headers: dict[str, str] = {}

    def response(self, instance: str | None = None) -> web.Response:
        body: dict[str, Any] = {"type": "about:blank", "title": self.title, "status": self.status}
        body["detail"] = self.detail
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return web.Response(
            status=self.status,
            text=json.dumps(body, default=str),
            content_type=PROBLEM_TYPE,
            headers=self.headers,
        )


def unauthorized(detail: str) -> Problem:
    problem = Problem(401, detail)
    problem.headers["WWW-Authenticate"] = 'Bearer realm="shipyard"'
    return problem


def unavailable(detail: str) -> Problem:
    """503 while the database cannot be reached: nothing was done, the same request may be sent
    again after ``Retry-After``."""
    problem = Problem(503, detail)
    problem.headers["Retry-After"] = str(RETRY_AFTER_S)
    return problem
