"""Helpers the endpoint modules share: JSON replies, opaque cursors, finding a run."""

from __future__ import annotations

import base64
import json
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from bot.api.gateway import gw
from bot.api.problems import Problem
from bot.api.routing import Call
from core.model import RunState


def reply(model: BaseModel, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        text=model.model_dump_json(),
        content_type="application/json",
        headers=headers,
    )


def encode_cursor(*values: Any) -> str:
    raw = json.dumps(list(values), default=str, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None, arity: int) -> list[Any] | None:
    """The values a cursor carries, or ``None`` for the first page; 400 if it was tampered with."""
    if cursor is None:
        return None
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except ValueError:
        values = None
    if not isinstance(values, list) or len(values) != arity:
        raise Problem(400, "invalid cursor: pass back the next_cursor of the previous page unchanged")
    return values


async def find_run(call: Call, ref: str | None = None) -> RunState:
    ref = ref if ref is not None else call.params["run_id"]
    state = await gw(call).read(gw(call).reads.run, ref)
    if state is None:
        raise Problem(404, f"no run {ref!r} (use the run's id, or pipeline#number such as web#42)")
    return state
