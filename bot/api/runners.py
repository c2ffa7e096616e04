"""Runners as resources (docs/runners.md): list them with their labels and state, drain one (it
finishes its jobs, claims nothing more and stops), resume it, forget one that is gone."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, Field

from bot.api.common import reply
from bot.api.gateway import gw
from bot.api.problems import Problem
from bot.api.routing import Call
from bot.api.spec import API
from bot.backend import now
from core.access import Action
from core.labels import RunnerSeen

State = Literal["online", "offline", "draining"]


class RunnerOut(BaseModel):
    name: str
    labels: list[str] = Field(description="it is handed only jobs whose labels it all carries")
    version: str = Field(description="the runner's own version (`builtin`: the one inside the server)")
    capacity: int = Field(description="jobs it runs at once")
    state: State = Field(description="`draining`: told to finish its jobs and stop")
    online: bool = Field(description="it called within two of its leases")
    running: int = Field(description="jobs it holds now")
    first_seen: datetime
    last_seen: datetime

    @classmethod
    def of(cls, r: RunnerSeen, at: datetime) -> RunnerOut:
        return cls(
            name=r.name,
            labels=list(r.labels),
            version=r.version,
            capacity=r.capacity,
            state=r.state(at),
            online=r.online(at),
            running=r.running,
            first_seen=r.first_seen,
            last_seen=r.last_seen,
        )


class RunnerList(BaseModel):
    items: list[RunnerOut]


def _name(call: Call) -> str:
    name = call.params["name"]
    if not name or len(name) > 200:
        raise Problem(422, f"runner name {name!r}: 1 to 200 characters")
    return name


@API.op(
    "GET",
    "/runners",
    summary="The runners this server has seen",
    action=Action.READ,
    tag="runners",
    responses={200: ("every runner, by name, online or not", RunnerList)},
)
async def list_runners(call: Call) -> web.Response:
    found = await gw(call).read(gw(call).shipyard.runners.all)
    at = now()
    return reply(RunnerList(items=[RunnerOut.of(r, at) for r in found]))


@API.op(
    "GET",
    "/runners/{name}",
    summary="One runner",
    action=Action.READ,
    tag="runners",
    responses={200: ("the runner", RunnerOut)},
)
async def get_runner(call: Call) -> web.Response:
    found = await gw(call).read(gw(call).shipyard.runners.get, _name(call))
    return reply(RunnerOut.of(found, now()))


@API.op(
    "POST",
    "/runners/{name}/drain",
    summary="Drain a runner: it finishes its jobs, claims nothing more and stops",
    action=Action.MANAGE,
    tag="runners",
    responses={200: ("draining", RunnerOut)},
)
async def drain_runner(call: Call) -> web.Response:
    """Admins. The runner is handed no job from now on; `shipyard runner` is told so on its next
    claim and exits once its jobs have ended. It stays drained (started again, it claims
    nothing) until resumed."""
    shipyard, name = gw(call).shipyard, _name(call)
    found = await gw(call).write(shipyard.runners.drain, name, call.principal.name, now(), "rest")
    call.audited = True  # (the registry audited it; a refusal is audited as any other)
    shipyard.attendance.forget(name)
    return reply(RunnerOut.of(found, now()))


@API.op(
    "POST",
    "/runners/{name}/resume",
    summary="Undo a drain: the runner may claim jobs again",
    action=Action.MANAGE,
    tag="runners",
    responses={200: ("resumed", RunnerOut)},
)
async def resume_runner(call: Call) -> web.Response:
    shipyard, name = gw(call).shipyard, _name(call)
    found = await gw(call).write(shipyard.runners.resume, name, call.principal.name, now(), "rest")
    call.audited = True
    shipyard.attendance.forget(name)
    return reply(RunnerOut.of(found, now()))


@API.op(
    "DELETE",
    "/runners/{name}",
    summary="Forget a runner that is gone",
    action=Action.MANAGE,
    tag="runners",
    responses={200: ("forgotten (it is listed again if it ever calls again)", RunnerOut)},
)
async def delete_runner(call: Call) -> web.Response:
    """Admins. `409` while it holds jobs, or is online and not draining."""
    shipyard, name = gw(call).shipyard, _name(call)
    found = await gw(call).write(shipyard.runners.delete, name, call.principal.name, now(), "rest")
    call.audited = True
    shipyard.attendance.forget(name)
    return reply(RunnerOut.of(found, now()))
