"""Runs: trigger, read, follow, control, and clear their gates."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from pydantic import BaseModel

from bot.api.common import find_run, reply, run_cursor, run_position
from bot.api.gateway import gw
from bot.api.problems import Problem
from bot.api.routing import Call
from bot.api.schemas import (
    AbortIn,
    ApproveIn,
    CancelIn,
    EmptyIn,
    LogQuery,
    MeasurementOut,
    PromoteIn,
    RejectIn,
    RunOut,
    RunPage,
    RunsQuery,
    RunSummary,
    StuckOut,
    StuckRunSummary,
    TriggerIn,
    VerificationIn,
    VerificationOut,
    VerificationsOut,
)
from bot.api.spec import API
from bot.backend import now
from core.access import Action
from core.commands import (
    AbortRollout,
    ApproveGate,
    CancelRun,
    Command,
    EndVerification,
    FailRun,
    PauseRun,
    PromoteRollout,
    RejectGate,
    ResumeRun,
    RetryRun,
    TriggerRun,
)
from core.engine import Decision
from core.errors import DatabaseUnreachable
from core.model import Actor, RunState
from core.states import RUN_TERMINAL
from storage.analyses import AnalysisStore
from storage.reads import RunFilter

RUN_CREATED = {"Location": "where the run can be read: /api/v1/runs/{run_id}"}
#: how long an event stream stays quiet before a comment line keeps proxies from closing it
KEEPALIVE_S = 15.0


def actor(call: Call) -> Actor:
    return Actor(call.principal.name, "rest", call.principal)


def _created(state: RunState, status: int) -> web.Response:
    return reply(RunOut.of(state), status, {"Location": f"/api/v1/runs/{state.run.id}"})


def _state(decision: Decision) -> RunState:
    assert decision.state is not None
    return decision.state


def _run(decision: Decision) -> web.Response:
    return reply(RunOut.of(_state(decision)))


@API.op(
    "POST",
    "/pipelines/{pipeline_id}/runs",
    summary="Trigger a run",
    action=Action.TRIGGER,
    tag="runs",
    body=TriggerIn,
    responses={202: ("accepted: the run is queued and proceeds on its own", RunOut)},
    headers={202: RUN_CREATED},
)
async def trigger_run(call: Call) -> web.Response:
    """Answers at once; follow the run with GET /runs/{run_id} or its event stream."""
    body: TriggerIn = call.body
    return await gw(call).respond(
        call,
        TriggerRun(
            pipeline=call.params["pipeline_id"],
            actor=actor(call),
            parameters=body.parameters,
            source_revision=body.revision,
            revision_time=body.revision_time,
            idempotency_key=run_key(call),
            pipeline_version=body.pipeline_version,
            branch=body.branch,
            break_glass=body.break_glass,
        ),
        lambda decision: _created(_state(decision), 202),
    )


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:40]


def run_key(call: Call, *scope: str) -> str | None:
    """What a run started under an ``Idempotency-Key`` carries, so that one request never makes
    two runs, even when the request's claim on the key lapsed and a retry took it over. Scoped
    to the caller, as the key is, to the request (once the key's answer is purged, the key with
    another body is a new request, never answered with the run of the old one), and to
    ``scope`` for the endpoints other than a trigger that start runs of a pipeline (a rollback
    and a trigger of one pipeline never share a run)."""
    if call.idempotency_key is None:
        return None
    return "api:" + _digest(call.principal.name, call.idempotency_key, call.key_fingerprint, *scope)


@API.op(
    "GET",
    "/runs",
    summary="List runs, newest first",
    action=Action.READ,
    tag="runs",
    query=RunsQuery,
    responses={200: ("a page of runs", RunPage)},
)
async def list_runs(call: Call) -> web.Response:
    """`?stuck=true` lists zombies instead: unfinished runs that nothing moved for longer than
    `SHIPYARD_STUCK_AFTER_SECONDS`, each with what it waits for (cancel them to clear them)."""
    q: RunsQuery = call.query
    if q.stuck:
        found = await gw(call).stuck(q.limit)
        items: list[RunSummary | StuckRunSummary] = [
            StuckRunSummary(**RunSummary.fields_of(s.state), stuck=StuckOut(since=s.since, reason=s.reason))
            for s in found
        ]
        return reply(RunPage(items=items, next_cursor=None))
    position = run_position(q.cursor)
    where = RunFilter(
        pipeline=q.pipeline,
        status=str(q.status) if q.status else None,
        environment=q.environment,
        triggered_by=q.triggered_by,
    )
    states = await gw(call).read(gw(call).reads.runs, where, position, q.limit + 1)
    more = len(states) > q.limit
    states = states[: q.limit]
    cursor = run_cursor(states[-1]) if more else None
    return reply(RunPage(items=[RunSummary.of(s) for s in states], next_cursor=cursor))


@API.op(
    "GET",
    "/runs/{run_id}",
    summary="A run with its stages, jobs and gates",
    action=Action.READ,
    tag="runs",
    responses={
        200: ("the run", RunOut),
        304: ("unchanged since the ETag sent in If-None-Match", None),
    },
    headers={200: {"ETag": "changes whenever the run or any of its parts changes"}},
)
async def get_run(call: Call) -> web.Response:
    """`run_id` is the run's id or `pipeline#number` (URL-encoded: `web%2342`). Send the ETag
    back in `If-None-Match` to poll cheaply."""
    state = await find_run(call)
    waits = await runner_waits_of(call, state)
    # (why jobs wait for a runner changes without the run changing: it is part of the tag)
    waited = hashlib.sha256(json.dumps(waits, sort_keys=True).encode()).hexdigest()[:8] if waits else ""
    etag = f'"{state.run.id}.{state.run.version}{"." + waited if waited else ""}"'
    if {etag, "*"} & _etags(call.request.headers.get("If-None-Match", "")):
        return web.Response(status=304, headers={"ETag": etag})
    return reply(RunOut.of(state, waits), headers={"ETag": etag})


async def runner_waits_of(call: Call, state: RunState) -> dict[str, str]:
    """Why this run's queued jobs wait for a runner, if they have waited a while (the runners
    are read only then)."""
    return await gw(call).read(gw(call).shipyard.runners.waits, state.jobs, now())


def _etags(header: str) -> set[str]:
    return {t.strip().removeprefix("W/") for t in header.split(",") if t.strip()}


CONTROL_RESPONSES: dict[int, tuple[str, type[RunOut] | str | None]] = {
    200: ("the run after the change", RunOut)
}


@dataclass(frozen=True)
class RunControl:
    """One ``POST /runs/{run_id}/<verb>``: find the run, build the command, answer with the run
    (or, for a retry, the new run). The operation's id and description are ``name`` and ``doc``."""

    name: str
    verb: str
    summary: str
    action: Action
    body: type[BaseModel]
    command: Callable[[Call, str], Command]
    doc: str = ""

    def register(self) -> None:
        retry = self.verb == "retry"

        async def handler(call: Call) -> web.Response:
            state = await find_run(call)
            command = self.command(call, state.run.id)
            if retry:
                return await gw(call).respond(call, command, lambda d: _created(_state(d), 202))
            return await gw(call).respond(call, command, _run)

        handler.__name__ = handler.__qualname__ = self.name
        handler.__doc__ = self.doc
        API.op(
            "POST",
            f"/runs/{{run_id}}/{self.verb}",
            summary=self.summary,
            action=self.action,
            tag="runs",
            body=self.body,
            responses={202: ("the new run, starting from the stage that failed", RunOut)}
            if retry
            else CONTROL_RESPONSES,
            headers={202: RUN_CREATED} if retry else None,
        )(handler)


def _verdict(call: Call, run_id: str) -> EndVerification:
    verdict = call.body.verdict
    rollback = True if verdict == "failed" else None
    return EndVerification(
        run_id=run_id,
        verdict=verdict,
        reason=call.body.reason,
        rollback=rollback,
        actor=actor(call),
        stage=call.body.stage,
    )


def _promote(call: Call, run_id: str, *, full: bool) -> PromoteRollout:
    body: PromoteIn = call.body
    step = body.step - 1 if body.step is not None else None  # (the run JSON counts steps from 1)
    return PromoteRollout(run_id=run_id, actor=actor(call), full=full, comment=body.comment, step=step)


RUN_CONTROLS = (
    RunControl(
        "cancel_run", "cancel", "Cancel a run", Action.CONTROL, CancelIn,
        lambda c, r: CancelRun(run_id=r, actor=actor(c), reason=c.body.reason),
        "Running jobs are killed. Deployers may cancel their own runs; admins any.",
    ),
    RunControl(
        "fail_run", "fail", "Mark a run failed", Action.CONTROL, CancelIn,
        lambda c, r: FailRun(run_id=r, actor=actor(c), reason=c.body.reason),
        "Like cancel, but the run ends `failed` (e.g. a runner was lost mid-deploy and you judge\n"
        "the deployment broken): history and rollback count it as a failure.",
    ),
    RunControl(
        "end_verification", "verification", "End a deployment's verification early", Action.APPROVE,
        VerificationIn, _verdict,
        "For a run that is `verifying`: `passed` (\"looks good\") ends verification and the run goes\n"
        "on; `failed` (\"roll back\") fails the run and starts the rollback run at once, whatever the\n"
        "environment's `on_failure`. Approvers only; who triggered the run may roll it back but not\n"
        "pass it (separation of duties). Answers 409 when nothing is being verified.",
    ),
    RunControl(
        "promote_rollout", "rollout/promote", "Promote a rollout past the step it waits in", Action.APPROVE,
        PromoteIn, lambda c, r: _promote(c, r, full=False),
        "Past an open-ended pause (a gate: its approvers, and not who triggered the run), an\n"
        "inconclusive analysis, a timed pause or an analysis still measuring. Send `step`, the\n"
        "run's `rollout.step` you saw: a rollout that moved on since answers 409 saying where it is\n"
        "now (two presses on one pause would otherwise also skip the step the first began). Answers\n"
        "409 too when the rollout is setting its router or is not under way.",
    ),
    RunControl(
        "promote_rollout_fully", "rollout/promote-full", "Promote a rollout past every step left",
        Action.APPROVE, PromoteIn,
        lambda c, r: _promote(c, r, full=True),
        "Skip the steps left: the promote jobs run, then all traffic goes to the stable servers.\n"
        "With `step`, refused (409) once the rollout moved on from that step.",
    ),
    RunControl(
        "pause_rollout", "rollout/pause", "Pause a rollout (its run)", Action.CONTROL, EmptyIn,
        lambda c, r: PauseRun(run_id=r, actor=actor(c), rollout=True),
        "The run pauses: a timed pause keeps the time it had left until it is resumed. 409 when\n"
        "the run has no rollout under way (pause the run itself with `POST /runs/{run_id}/pause`).",
    ),
    RunControl(
        "resume_rollout", "rollout/resume", "Resume a paused rollout (its run)", Action.CONTROL, EmptyIn,
        lambda c, r: ResumeRun(run_id=r, actor=actor(c), rollout=True),
        "409 when the run has no rollout under way.",
    ),
    # (deployers their own runs, approvers any: the command's own rule, ``core.access``)
    RunControl(
        "abort_rollout", "rollout/abort", "Abort a rollout", Action.READ, AbortIn,
        lambda c, r: AbortRollout(run_id=r, actor=actor(c), reason=c.body.reason),
        "All traffic goes back to the stable servers at once, then the abort jobs run, then the\n"
        "run ends `canceled` with the reason. Approvers may abort anyone's rollout; deployers their\n"
        "own.",
    ),
    RunControl(
        "pause_run", "pause", "Pause a run", Action.CONTROL, EmptyIn,
        lambda c, r: PauseRun(run_id=r, actor=actor(c)),
        "Running jobs finish; nothing new starts until the run is resumed.",
    ),
    RunControl(
        "resume_run", "resume", "Resume a paused run", Action.CONTROL, EmptyIn,
        lambda c, r: ResumeRun(run_id=r, actor=actor(c)),
    ),
    RunControl(
        "retry_run", "retry", "Retry a failed or canceled run", Action.CONTROL, EmptyIn,
        lambda c, r: RetryRun(run_id=r, actor=actor(c)),
        "A new run of the same pipeline version and parameters; finished stages are reused.",
    ),
)  # fmt: skip
for _row in RUN_CONTROLS:
    _row.register()


@API.op(
    "GET",
    "/runs/{run_id}/verification",
    summary="A run's verifications, with every measurement",
    action=Action.READ,
    tag="runs",
    responses={200: ("each verified deploy stage's analysis, oldest first", VerificationsOut)},
)
async def get_verification(call: Call) -> web.Response:
    """What was measured after each of the run's deployments to an environment that verifies
    (time, value, result of every measurement; of a long one the latest 500, those that decided
    it) and how each verification ended. Empty for a run that deployed nowhere verified."""
    state = await find_run(call)
    g = gw(call)
    return reply(
        VerificationsOut(run_id=state.run.id, items=await g.read(verifications_of, g.analyses, state))
    )


def verifications_of(analyses: AnalysisStore, state: RunState) -> list[VerificationOut]:
    """The run's analyses (verifications and rollout steps), each with every measurement."""
    return [
        VerificationOut(
            environment=a.environment,
            stage_index=a.stage_index,
            checks=list(a.checks),
            started_at=a.started_at,
            deadline=a.deadline,
            status=a.status.value,
            reason=a.reason,
            ended_at=a.ended_at,
            ended_by=a.ended_by,
            measurements=[MeasurementOut.of(m) for m in analyses.measurements(a.id)],
        )
        for a in analyses.of_run(state.run.id)
    ]


@API.op(
    "POST",
    "/runs/{run_id}/gates/{gate_id}/approve",
    summary="Approve a gate",
    action=Action.APPROVE,
    tag="gates",
    body=ApproveIn,
    at_gate_open=True,
    responses={200: ("the run after the approval", RunOut)},
)
async def approve_gate(call: Call) -> web.Response:
    """`gate_id` is the gate's id or its stage's name. Whoever triggered the run cannot approve
    it unless the gate allows self-approval; who may approve is fixed when the gate opens."""
    state = await find_run(call)
    command = ApproveGate(
        run_id=state.run.id, gate=call.params["gate_id"], actor=actor(call), comment=call.body.comment
    )
    return await gw(call).respond(call, command, _run)


@API.op(
    "POST",
    "/runs/{run_id}/gates/{gate_id}/reject",
    summary="Reject a gate (the run fails)",
    action=Action.APPROVE,
    tag="gates",
    body=RejectIn,
    at_gate_open=True,
    responses={200: ("the run after the rejection", RunOut)},
)
async def reject_gate(call: Call) -> web.Response:
    state = await find_run(call)
    command = RejectGate(
        run_id=state.run.id, gate=call.params["gate_id"], actor=actor(call), reason=call.body.comment
    )
    return await gw(call).respond(call, command, _run)


@API.op(
    "GET",
    "/runs/{run_id}/jobs/{job_id}/log",
    summary="A job's output",
    action=Action.READ,
    tag="runs",
    query=LogQuery,
    responses={200: ("the output, as text", "text/plain")},
)
async def job_log(call: Call) -> web.StreamResponse:
    """`job_id` is the job's id or `stage/job` (URL-encoded). The whole output of the latest
    attempt (streamed, a few chunks at a time), or its last `tail` lines."""
    state = await find_run(call)
    wanted = call.params["job_id"]
    job = state.find_job(wanted)
    if job is None:
        names = ", ".join(f"{state.stages[j.stage_index].name}/{j.name}" for j in state.jobs)
        raise Problem(404, f"{state.run.ref} has no job {wanted!r} (jobs: {names})")
    q: LogQuery = call.query
    store = gw(call).shipyard.store
    if q.tail is not None:
        lines = await gw(call).read(store.tail_log, job.id, q.tail, q.attempt)
        return web.Response(
            text="".join(line + "\n" for line in lines), content_type="text/plain", charset="utf-8"
        )
    pages = store.log_pages(job.id, q.attempt)
    response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    while (page := await gw(call).read(next, pages, None)) is not None:
        if not response.prepared:
            await response.prepare(call.request)
        await response.write("".join(c.text for c in page).encode())
    if not response.prepared:
        await response.prepare(call.request)
    await response.write_eof()
    return response


@API.op(
    "GET",
    "/runs/{run_id}/events",
    summary="Follow a run as Server-Sent Events",
    action=Action.READ,
    tag="runs",
    responses={
        200: ("one SSE message per event; the stream ends when the run has finished", "text/event-stream")
    },
)
async def run_events(call: Call) -> web.StreamResponse:
    """Each message has `id` (the event's sequence number), `event` (e.g. `job.succeeded`) and
    JSON `data`. Reconnect with `Last-Event-ID` to continue where the stream broke off."""
    state = await find_run(call)
    last = call.request.headers.get("Last-Event-ID", "0").strip() or "0"
    if not (last.isascii() and last.isdigit()) or len(last) > 18:
        raise Problem(400, "Last-Event-ID must be the id of an event this stream sent")
    seq = int(last)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(call.request)
    g, run_id = gw(call), state.run.id
    quiet = 0.0
    while True:
        try:
            finished = (await g.read(g.reads.run, run_id)).run.status in RUN_TERMINAL  # type: ignore[union-attr]
            events = await g.read(g.shipyard.store.events_after, seq, 500, run_id)
        except DatabaseUnreachable:  # the stream waits it out (keep-alives go on)
            finished, events = False, []
        for event in events:
            seq = event.seq
            data = {
                "run_id": event.run_id,
                "subject": event.subject,
                "subject_id": event.subject_id,
                "from": event.from_status,
                "to": event.to_status,
                "at": event.at.isoformat(),
                "data": event.data,
            }
            await response.write(f"id: {seq}\nevent: {event.name}\ndata: {json.dumps(data)}\n\n".encode())
        if events:
            quiet = 0.0
            continue
        if finished:
            break
        loop = asyncio.get_running_loop()
        started = loop.time()
        await g.shipyard.orchestrator.wait_for_events(g.shipyard.settings.poll_interval)
        quiet += loop.time() - started
        if quiet >= KEEPALIVE_S:
            await response.write(b": keep-alive\n\n")
            quiet = 0.0
    await response.write_eof()
    return response
