"""Deploying known artifacts and seeing what is in the way: promotion, rollback, an
environment's queue (and moving a run to its front), and why a deployment would wait."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import partial
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, Field

from bot.api.common import find_run, known_environment, reply
from bot.api.gateway import gw
from bot.api.pipelines import _info
from bot.api.problems import REFUSAL_STATUS, Problem
from bot.api.routing import Call
from bot.api.runs import _created, _state, actor, run_key
from bot.api.schemas import EmptyIn, ParamValue, RunOut, Strict
from bot.api.spec import API
from core.access import Action
from core.commands import MoveToFront, TriggerRun
from core.errors import CommandRefused
from core.rollback import RollbackPlan
from storage.artifacts import ArtifactStore
from storage.reviews import ReviewStore

NAME = r"^[a-z0-9][a-z0-9-]{0,62}$"


class PromoteIn(Strict):
    environment: str = Field(pattern=NAME, description="where to deploy the artifact")
    pipeline: str | None = Field(
        None, pattern=NAME, description="whose deploy stage to use (default: the pipeline that built it)"
    )
    parameters: dict[str, ParamValue] = Field(
        default_factory=dict,
        max_length=100,
        description="the run's parameters (default: those of the run that built the artifact)",
    )


class RollbackIn(Strict):
    to: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="a version (1.4.1) or name@version; default: the last good one",
    )


class FrontIn(Strict):
    reason: str = Field(min_length=1, max_length=1000, description="why it jumps the queue (audited)")


class RollbackOut(BaseModel):
    environment: str
    pipeline: str
    current: str | None = Field(description="what is deployed there now (name@version), if known")
    target: str = Field(description="what the rollback deploys again (name@version)")
    target_id: str
    summary: str


class BlockerOut(BaseModel):
    kind: Literal[
        "lock",
        "freeze",
        "health",
        "busy",
        "queue",
        "approvals",
        "promotion",
        "pipeline",
        "branch",
        "archived",
    ]
    what: str
    clears: str = Field(description="what or when clears it")


class BlockersOut(BaseModel):
    environment: str
    pipeline: str | None
    clear: bool = Field(description="nothing is in the way right now")
    blockers: list[BlockerOut]


class QueuedOut(BaseModel):
    run_id: str
    ref: str
    position: int
    estimated_start: datetime | None = Field(description="from how long recent deployments there took")


class QueueOut(BaseModel):
    environment: str
    running: str | None = Field(description="the ref of the run deploying there now")
    running_since: datetime | None
    typical_seconds: float | None
    waiting: list[QueuedOut]


class EnvQuery(Strict):
    pipeline: str | None = Field(None, pattern=NAME)


class ToQuery(Strict):
    to: str | None = Field(None, min_length=1, max_length=200)


def _env(call: Call) -> str:
    """The environment named in the path, refused with ``404`` when it cannot be a name."""
    name = call.params["env_id"]
    if not re.fullmatch(NAME, name):
        raise Problem(404, f"no environment {name[:80]!r} (names are like production: [a-z0-9-], ≤ 63)")
    return name


def _plan_out(plan: RollbackPlan) -> RollbackOut:
    current = plan.current.artifact if plan.current is not None else None
    return RollbackOut(
        environment=plan.environment,
        pipeline=plan.pipeline,
        current=current,
        target=plan.target.ref,
        target_id=plan.target.id,
        summary=plan.describe(),
    )


async def _plan(call: Call, to: str | None) -> RollbackPlan:
    g = gw(call)
    try:
        return await g.read(g.shipyard.service.rollback_plan, _env(call), to)
    except CommandRefused as exc:
        raise Problem(404 if exc.kind == "not_found" else 422, exc.message) from None


@API.op(
    "POST",
    "/artifacts/{artifact_id}/promote",
    summary="Deploy an artifact to an environment, without rebuilding",
    action=Action.TRIGGER,
    tag="artifacts",
    body=PromoteIn,
    responses={202: ("the promotion run, started", RunOut)},
)
async def promote(call: Call) -> web.Response:
    """Only the stages that deploy to the environment run. By default the artifact must have
    been deployed successfully to the environment before it on the promotion path (`403`
    names it); a bad artifact is refused."""
    body: PromoteIn = call.body
    g = gw(call)
    found = await g.read(ArtifactStore(g.shipyard.store).get, call.params["artifact_id"])
    if found is None:
        raise Problem(404, f"no artifact {call.params['artifact_id']!r}")
    pipeline = body.pipeline or found.pipeline
    if pipeline is None:
        raise Problem(422, f"{found.ref} was registered over the API: say which pipeline deploys it")
    command = TriggerRun(
        pipeline=pipeline,
        actor=actor(call),
        kind="promotion",
        parameters=body.parameters,
        artifact_id=found.id,
        deploy_to=body.environment,
        idempotency_key=run_key(call, "promotion", found.id, body.environment),
    )
    return await g.respond(call, command, lambda decision: _created(_state(decision), 202))


@API.op(
    "GET",
    "/environments/{env_id}/rollback",
    summary="What a rollback would deploy",
    action=Action.READ,
    tag="environments",
    query=ToQuery,
    responses={200: ("from which version to which", RollbackOut)},
)
async def preview_rollback(call: Call) -> web.Response:
    return reply(_plan_out(await _plan(call, call.query.to)))


@API.op(
    "POST",
    "/environments/{env_id}/rollback",
    summary="Roll an environment back to a known-good artifact",
    action=Action.TRIGGER,
    tag="environments",
    body=RollbackIn,
    responses={202: ("the rollback run, started", RunOut)},
)
async def rollback(call: Call) -> web.Response:
    """A new run deploying the last artifact that was deployed there successfully before the
    current one (or `to`). When it succeeds the environment is locked until someone
    acknowledges the rollback (`DELETE /environments/{env}/lock`)."""
    plan = await _plan(call, call.body.to)
    command = TriggerRun(
        pipeline=plan.pipeline,
        actor=actor(call),
        kind="rollback",
        artifact_id=plan.target.id,
        deploy_to=plan.environment,
        idempotency_key=run_key(call, "rollback", plan.environment),
    )
    return await gw(call).respond(call, command, lambda decision: _created(_state(decision), 202))


@API.op(
    "GET",
    "/environments/{env_id}/blockers",
    summary="Why a deployment would wait or be refused now",
    action=Action.READ,
    tag="environments",
    query=EnvQuery,
    responses={200: ("every reason at once, each with what clears it", BlockersOut)},
)
async def list_blockers(call: Call) -> web.Response:
    g, env, pipeline = gw(call), _env(call), call.query.pipeline
    await known_environment(call, env)  # (nothing stands in front of a typo: it must not read "clear")
    if pipeline is not None:
        await _info(call, pipeline)
    found = await g.read(g.shipyard.service.why, env, pipeline)
    items = [BlockerOut(kind=b.kind, what=b.what, clears=b.clears) for b in found]
    return reply(BlockersOut(environment=env, pipeline=pipeline, clear=not items, blockers=items))


@API.op(
    "GET",
    "/environments/{env_id}/queue",
    summary="What deploys to an environment now and what waits",
    action=Action.READ,
    tag="environments",
    responses={200: ("the queue, in order, with estimated starts", QueueOut)},
)
async def get_queue(call: Call) -> web.Response:
    g, env = gw(call), _env(call)
    await known_environment(call, env)
    q = await g.read(g.shipyard.service.queue, env)
    waiting = [
        QueuedOut(run_id=e.run_id, ref=e.ref, position=e.position, estimated_start=e.eta) for e in q.waiting
    ]
    out = QueueOut(
        environment=q.environment,
        running=q.running[1] if q.running else None,
        running_since=q.running_since,
        typical_seconds=q.typical_s,
        waiting=waiting,
    )
    return reply(out)


@API.op(
    "POST",
    "/environments/{env_id}/queue/{run_id}/front",
    summary="Move a queued run to the front (admins)",
    action=Action.MANAGE,
    tag="environments",
    body=FrontIn,
    responses={200: ("the run, now first in the queue", RunOut)},
)
async def move_to_front(call: Call) -> web.Response:
    g = gw(call)
    state = await find_run(call)
    q = await g.read(g.shipyard.service.queue, _env(call))
    if not any(e.run_id == state.run.id for e in q.waiting):
        raise Problem(409, f"{state.run.ref} is not waiting in {q.environment}'s queue")
    decision = await g.command(
        call, MoveToFront(run_id=state.run.id, actor=actor(call), reason=call.body.reason)
    )
    assert decision.state is not None
    return reply(RunOut.of(decision.state))


class ReviewOut(BaseModel):
    run_id: str
    admin: str = Field(description="who broke the glass")
    reason: str
    opened_at: datetime
    due_at: datetime
    acknowledged_by: str | None
    acknowledged_at: datetime | None


@API.op(
    "POST",
    "/runs/{run_id}/review/acknowledge",
    summary="Acknowledge the follow-up review of a break-glass run",
    action=Action.APPROVE,
    tag="runs",
    body=EmptyIn,
    responses={200: ("the review, acknowledged", ReviewOut)},
)
async def acknowledge_review(call: Call) -> web.Response:
    """Someone other than the admin who broke the glass (and whoever asked for the run) looks at
    what was done and says so; until then the run's Slack thread is reminded hourly."""
    g = gw(call)
    state = await find_run(call)
    review_store = ReviewStore(g.shipyard.store)
    requested = tuple(state.run.requested_by or (state.run.triggered_by,))
    call.audited = True
    try:
        review = await g.write(
            partial(review_store.acknowledge, channel="rest", ref=state.run.ref),
            state.run.id,
            call.principal.name,
            requested,
            datetime.now(UTC),
        )
    except CommandRefused as exc:
        raise Problem(REFUSAL_STATUS.get(exc.kind, 409), exc.message) from None
    return reply(ReviewOut(**{f: getattr(review, f) for f in ReviewOut.model_fields}))
