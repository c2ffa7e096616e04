"""Helpers the endpoint modules share: JSON replies, list cursors, finding a run.

A cursor is the sort key of the last item of a page: every value of the right shape is a
valid place to continue from, so a cursor can never be "invalid", only well- or ill-formed
(which its query model's pattern rejects with 400)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aiohttp import web
from pydantic import BaseModel

from bot.api.gateway import gw
from bot.api.problems import Problem
from bot.api.routing import Call
from core.model import RunState

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def reply(model: BaseModel, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        text=model.model_dump_json(),
        content_type="application/json",
        headers=headers,
    )


def id_cursor(cursor: str | None, largest: int = 2**31 - 1) -> int | None:
    """Lists ordered by a numeric key continue below the last key seen (any number is a place;
    one beyond the column's range means "from the top")."""
    return min(int(cursor), largest) if cursor else None


def run_cursor(state: RunState) -> str:
    """Runs are ordered by (created_at, id): the cursor is both, microseconds first."""
    return f"{(state.run.created_at - EPOCH) // timedelta(microseconds=1)}.{state.run.id}"


def run_position(cursor: str | None) -> tuple[datetime, str] | None:
    if not cursor:
        return None
    micros, _, run_id = cursor.partition(".")
    try:
        at = EPOCH + timedelta(microseconds=int(micros))
    except OverflowError:
        at = datetime.max.replace(tzinfo=UTC)
    return at, run_id


async def find_run(call: Call, ref: str | None = None) -> RunState:
    ref = ref if ref is not None else call.params["run_id"]
    state = await gw(call).read(gw(call).reads.run, ref, quick=True)
    if state is None:
        raise Problem(404, f"no run {ref!r} (use the run's id, or pipeline#number such as web#42)")
    return state


async def known_environment(call: Call, name: str) -> None:
    """404 unless ``name`` is an environment: one a pipeline deploys to, or one the configuration
    declares (watched before anything was deployed there). A typo must not lock, filter or
    watch nothing."""
    if name in gw(call).shipyard.settings.environments:
        return
    names = await gw(call).read(gw(call).reads.environment_names)
    if name not in names:
        known = sorted({*gw(call).shipyard.settings.environments.path, *names})
        raise Problem(404, f"no environment {name!r} (environments: {', '.join(known) or 'none yet'})")
