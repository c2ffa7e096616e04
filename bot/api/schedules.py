"""Schedules: runs the clock starts. Created by a principal who then owns them (the runs are
theirs, for roles and audit); declared in pipeline files (owned by ``schedule_owner``)."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web
from pydantic import BaseModel, Field

from bot.api.common import reply
from bot.api.gateway import gw
from bot.api.problems import Problem
from bot.api.routing import Call
from bot.api.schemas import ParamValue, Strict
from bot.api.spec import API
from bot.backend import now
from bot.scheduler import pause_by_hand, resume_by_hand
from core import schedule as timing
from core.access import Action, Role
from core.definition import parameter_text, resolve_parameters
from core.errors import Conflict, ShipyardError
from core.schedule import Schedule
from storage.schedules import ScheduleStore


class ScheduleIn(Strict):
    pipeline: str = Field(max_length=63)
    cron: str = Field(
        max_length=120, pattern=r"^\S+(\s+\S+){4}$", description='five fields, e.g. "0 2 * * 1-5"'
    )
    timezone: str = Field(
        "UTC", max_length=64, pattern=r"^[A-Za-z0-9_+/-]+$", description="an IANA name, e.g. Europe/Berlin"
    )
    parameters: dict[str, ParamValue] = Field(default_factory=dict, max_length=100)
    grace_seconds: float = Field(
        timing.DEFAULT_GRACE_S,
        ge=0,
        le=7 * 86400,
        description="a fire missed by less than this still runs (one under a minute late always does)",
    )


class ScheduleOut(BaseModel):
    id: str
    pipeline: str
    cron: str
    timezone: str
    parameters: dict[str, str]
    owner: str
    source: str
    grace_seconds: float
    next_fire_at: datetime | None = Field(
        description="when it fires next; null while it is paused (a resume fires from the next "
        "time after the resume: what it missed meanwhile does not run)"
    )
    created_at: datetime
    paused: bool = Field(description="true: it does not fire until resumed")
    paused_reason: str | None = Field(
        None,
        description="why it is paused: by whom, or why it can no longer start a run (its pipeline "
        "archived, a cron expression or parameters no longer accepted)",
    )
    paused_at: datetime | None = None

    @classmethod
    def of(cls, s: Schedule) -> ScheduleOut:
        return cls(
            id=s.id,
            pipeline=s.pipeline,
            cron=s.cron,
            timezone=s.timezone,
            parameters=s.parameters,
            owner=s.owner,
            source=s.source,
            grace_seconds=s.grace_s,
            next_fire_at=None if s.paused_reason else s.next_fire_at,
            created_at=s.created_at,
            paused=bool(s.paused_reason),
            paused_reason=s.paused_reason or None,
            paused_at=s.paused_at,
        )


class ScheduleList(BaseModel):
    items: list[ScheduleOut]


def _schedule_store(call: Call) -> ScheduleStore:
    return ScheduleStore(gw(call).shipyard.store)


@API.op(
    "GET",
    "/schedules",
    summary="List schedules, next to fire first",
    action=Action.READ,
    tag="schedules",
    responses={200: ("every schedule with its next fire time", ScheduleList)},
)
async def list_schedules(call: Call) -> web.Response:
    found = await gw(call).read(_schedule_store(call).all)
    return reply(ScheduleList(items=[ScheduleOut.of(s) for s in found]))


@API.op(
    "POST",
    "/schedules",
    summary="Add a schedule",
    action=Action.TRIGGER,
    tag="schedules",
    body=ScheduleIn,
    responses={201: ("the schedule; you own it and its runs are yours", ScheduleOut)},
    headers={201: {"Location": "/api/v1/schedules/{id}"}},
)
async def create_schedule(call: Call) -> web.Response:
    body: ScheduleIn = call.body
    try:
        expression = timing.check_cron(body.cron)
        timing.zone(body.timezone)
    except ShipyardError as exc:
        raise Problem(422, exc.message) from None
    info = await gw(call).read(gw(call).reads.pipeline, body.pipeline)
    if info is None:
        raise Problem(404, f"no pipeline {body.pipeline!r}")
    if info.archived:  # (else every fire is refused, as in Slack)
        raise Problem(409, f"pipeline {body.pipeline!r} is archived: it starts no runs; restore it first")
    params = parameter_text(body.parameters)
    try:  # (else every fire is refused, the first the morning after)
        resolve_parameters(info.latest.definition, params)
    except ShipyardError as exc:
        raise Problem(422, exc.message) from None
    at = now()
    created = await gw(call).write(
        lambda: _schedule_store(call).new(
            pipeline=body.pipeline,
            cron=expression,
            timezone=body.timezone,
            parameters=params,
            owner=call.principal.name,
            source="api",
            grace_s=body.grace_seconds,
            next_fire_at=timing.next_fire(expression, body.timezone, at),
            now=at,
        )
    )
    gw(call).schedule_added()
    return reply(ScheduleOut.of(created), 201, {"Location": f"/api/v1/schedules/{created.id}"})


@API.op(
    "GET",
    "/schedules/{schedule_id}",
    summary="A schedule",
    action=Action.READ,
    tag="schedules",
    responses={200: ("the schedule", ScheduleOut)},
)
async def get_schedule(call: Call) -> web.Response:
    found = await gw(call).read(_schedule_store(call).get, call.params["schedule_id"])
    if found is None:
        raise Problem(404, f"no schedule {call.params['schedule_id']!r}")
    return reply(ScheduleOut.of(found))


@API.op(
    "DELETE",
    "/schedules/{schedule_id}",
    summary="Remove a schedule",
    action=Action.TRIGGER,
    tag="schedules",
    responses={200: ("the schedule as it was", ScheduleOut)},
)
async def delete_schedule(call: Call) -> web.Response:
    """Its owner or an admin. Schedules declared in a pipeline file are removed by editing it."""
    found = await _own(call, "remove")
    if not await gw(call).write(_schedule_store(call).remove, found.id, now()):
        raise Problem(404, f"no schedule {found.id!r}")
    return reply(ScheduleOut.of(found))


async def _own(call: Call, doing: str) -> Schedule:
    """The schedule of the path, if the caller may change it (its owner or an admin)."""
    found = await gw(call).read(_schedule_store(call).get, call.params["schedule_id"])
    if found is None:
        raise Problem(404, f"no schedule {call.params['schedule_id']!r}")
    if found.source == "file":
        raise Problem(
            409, f"schedule {found.id} is declared in pipeline {found.pipeline}'s file; edit the file"
        )
    if found.owner != call.principal.name and Role.ADMIN not in call.principal.roles:
        raise Problem(
            403, f"schedule {found.id} belongs to {found.owner}; only they or an admin may {doing} it"
        )
    return found


@API.op(
    "POST",
    "/schedules/{schedule_id}/pause",
    summary="Pause a schedule (it does not fire until resumed)",
    action=Action.TRIGGER,
    tag="schedules",
    responses={200: ("the schedule, paused", ScheduleOut)},
)
async def pause_schedule(call: Call) -> web.Response:
    """Its owner or an admin. A fire read due before the pause does not start a run after it."""
    found = await _own(call, "pause")
    try:
        await pause_by_hand(gw(call), found, call.principal.name)
    except Conflict as exc:
        raise Problem(409, f"schedule {found.id} {exc.message}") from None
    return reply(ScheduleOut.of(await _again(call, found.id)))


@API.op(
    "POST",
    "/schedules/{schedule_id}/resume",
    summary="Resume a paused schedule from its next fire (the fires missed while paused do not run)",
    action=Action.TRIGGER,
    tag="schedules",
    responses={200: ("the schedule, firing again", ScheduleOut)},
)
async def resume_schedule(call: Call) -> web.Response:
    """Its owner or an admin; refused while it still cannot start a run (say why)."""
    found = await _own(call, "resume")
    try:
        await resume_by_hand(gw(call), found, call.principal.name)
    except Conflict as exc:
        raise Problem(409, f"schedule {found.id} {exc.message}") from None
    return reply(ScheduleOut.of(await _again(call, found.id)))


async def _again(call: Call, schedule_id: str) -> Schedule:
    found = await gw(call).read(_schedule_store(call).get, schedule_id)
    if found is None:  # (removed right after)
        raise Problem(404, f"no schedule {schedule_id!r}")
    return found
