"""How a Shipyard process writes its log: ``SHIPYARD_LOG_FORMAT=text`` (the default: one line
a record, for a person at a terminal) or ``json`` (one JSON object a line, for a log pipeline),
at ``SHIPYARD_LOG_LEVEL``. A JSON line carries ``run``, ``stage``, ``job``, ``gate``,
``principal`` and ``request_id`` when the record was given them (``extra=``).

An idle server writes nothing at the default level: APScheduler's per-tick INFO lines are
silenced (WARNING), and health probes (``/healthz``, ``/readyz``) that succeed are not
access-logged (``AccessLog``). What each level means: docs/operations.md#logs."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

#: record attributes written as fields of a JSON line when a record carries them
CONTEXT = ("run", "stage", "job", "gate", "principal", "request_id")
#: paths probed every few seconds by load balancers and orchestrators: not access-logged
PROBES = frozenset({"/healthz", "/readyz"})
TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """A record as one JSON object: time (UTC, ISO 8601), level, logger, message, context."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in CONTEXT:
            value = getattr(record, key, None)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class AccessLog(AbstractAccessLogger):
    """aiohttp's access log, less the health probes that succeeded; each line carries the
    request's ``X-Request-Id`` when it came with one."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        if request.path in PROBES and response.status < 400:
            return
        request_id = response.headers.get("X-Request-Id") or request.headers.get("X-Request-Id")
        self.logger.info(
            "%s %s %s %d %.1f ms",
            request.remote,
            request.method,
            request.path_qs,
            response.status,
            time * 1000,
            extra={"request_id": request_id[:200]} if request_id else {},
        )


async def request_id(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer names its request: the client's ``X-Request-Id`` (printable, at most 200
    characters) or, without one, a new id, returned in ``X-Request-Id`` (which ``AccessLog``
    puts on the request's line); an ``on_response_prepare`` signal, so refusals carry it too."""
    given = request.headers.get("X-Request-Id", "")
    usable = 0 < len(given) <= 200 and given.isprintable()
    response.headers["X-Request-Id"] = given if usable else uuid.uuid4().hex


def setup(level: str, fmt: str = "text") -> None:
    """The root logger at ``level`` writing ``fmt`` lines to stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # APScheduler logs every run of every job at INFO: lines every second from an idle server
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, root.level))
