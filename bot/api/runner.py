"""The runner protocol over HTTP: what a remote ``shipyard runner`` calls (``core.runtime.http_link``
is its client). The same operations as the built-in runner's ``LocalLink``, so a job runs the
same way wherever its runner is: claim (a long poll), renew leases, store log chunks, report.

Only principals holding the ``runner`` role may call these, and a runner acts as itself: the
``runner`` it names is its token's principal. Every call carries the protocol version in
``Shipyard-Runner-Protocol``; a runner of another version is refused with the versions this
server takes. Stale attempts (the lease expired and the job moved on) are refused with 409, so a
runner that comes back from a partition kills its copy and its late log and result are dropped.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from aiohttp import web
from pydantic import BaseModel, Field, field_validator

from bot.api.common import reply
from bot.api.gateway import gw
from bot.api.problems import Problem
from bot.api.routing import Call
from bot.api.schemas import INT32_MAX, INT32_MIN, Strict
from bot.api.spec import API
from core.access import Action
from core.assignment import Assignment
from core.commands import CompleteJob, ExpireLease, InterruptJob, ReportLateResult
from core.labels import check_labels
from core.model import Actor
from core.runtime.http_link import MAX_LEASE_S, PROTOCOL_REFUSAL
from core.runtime.workspaces import MAX_RUN_ID, RUNS_PER_ASK
from storage.secrets import mask_report, open_assignment

#: the protocol versions this server speaks (a runner sends its own in the header)
PROTOCOLS = frozenset({1})
HEADER = "Shipyard-Runner-Protocol"
#: the longest a claim waits for a job to become ready
MAX_WAIT_S = 30.0

_RESPONSES = {409: ("the attempt is stale: its lease expired and the job moved on", None)}


class ClaimIn(Strict):
    runner: str = Field(min_length=1, max_length=200)
    limit: int = Field(ge=1, le=100)
    lease_s: float = Field(ge=1, le=MAX_LEASE_S)
    #: wait up to this long for a job to become ready (a long poll); 0: answer at once
    wait_s: float = Field(0.0, ge=0, le=MAX_WAIT_S)
    #: the labels this runner carries: it is handed only jobs that need no others
    labels: list[str] = Field(default_factory=list, max_length=50)
    #: the runner's own version, as listed by ``GET /api/v1/runners``
    version: str = Field("", max_length=64)
    #: jobs it runs at once (listed; it asks for no more than it has room for)
    capacity: int = Field(0, ge=0, le=10_000)

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: list[str]) -> list[str]:
        return check_labels(value)


class AssignmentOut(BaseModel):
    run_id: str
    job_id: str
    attempt: int
    pipeline: str
    stage: str
    name: str
    command: str | list[str]
    env: dict[str, str]
    timeout_s: float
    #: secret values in ``env``: the runner masks them in everything the job writes
    masked: list[str] = Field(default_factory=list)
    #: why the job must not run (its secrets cannot be opened): the runner fails it with this
    refusal: str = ""
    #: a note for the top of the job's log
    notice: str = ""

    @classmethod
    def of(cls, a: Assignment) -> AssignmentOut:
        command = a.command if isinstance(a.command, str) else list(a.command)
        return cls(
            run_id=a.run_id,
            job_id=a.job_id,
            attempt=a.attempt,
            pipeline=a.pipeline,
            stage=a.stage,
            name=a.name,
            command=command,
            env=a.env,
            timeout_s=a.timeout_s,
            masked=list(a.masked),
            refusal=a.refusal,
            notice=a.notice,
        )


class ClaimOut(BaseModel):
    assignments: list[AssignmentOut]
    #: the runner was drained: it claims nothing more, finishes its jobs and stops
    draining: bool = False


#: a job attempt's number, as the database stores it (a larger one was never handed out)
AttemptNo = Annotated[int, Field(ge=0, le=INT32_MAX)]


class Attempt(Strict):
    job_id: str = Field(min_length=1, max_length=90)
    attempt: AttemptNo


class HeldIn(Strict):
    runner: str = Field(min_length=1, max_length=200)
    held: list[Attempt] = Field(max_length=1000)
    lease_s: float = Field(30.0, ge=1, le=MAX_LEASE_S)
    #: (``still-held``) wait up to this long for one of ``held`` to be taken away (a long
    #: poll, so a cancel reaches the runner at once); 0: answer at once
    wait_s: float = Field(0.0, ge=0, le=MAX_WAIT_S)


class KeptOut(BaseModel):
    #: the job ids of ``held`` this runner still holds: kill the others
    kept: list[str]


class Holding(BaseModel):
    run_id: str
    job_id: str
    attempt: int


class HoldingOut(BaseModel):
    #: every attempt the server thinks this runner holds
    held: list[Holding]


class RunsIn(Strict):
    runner: str = Field(min_length=1, max_length=200)
    #: the runs the runner keeps workspaces for
    run_ids: list[Annotated[str, Field(min_length=1, max_length=MAX_RUN_ID)]] = Field(max_length=RUNS_PER_ASK)


class OverOut(BaseModel):
    #: those of ``run_ids`` that are over (ended, or unknown here): remove their workspaces
    over: list[str]


class Chunk(Strict):
    stream: Literal["stdout", "stderr", "system"]
    text: str


class LogIn(Strict):
    runner: str = Field(min_length=1, max_length=200)
    job_id: str = Field(min_length=1, max_length=90)
    attempt: AttemptNo = Field(ge=1)
    #: the output in order
    chunks: list[Chunk] = Field(max_length=10_000)


class ReportIn(Strict):
    runner: str = Field(min_length=1, max_length=200)
    kind: Literal["complete", "interrupt", "expire", "late"]
    run_id: str = Field(min_length=1, max_length=64)
    job_id: str = Field(min_length=1, max_length=90)
    attempt: AttemptNo
    outcome: Literal["succeeded", "failed", "timed_out"] = "succeeded"
    #: a process's exit status: a 32-bit integer, as the database stores it
    exit_code: int | None = Field(None, ge=INT32_MIN, le=INT32_MAX)
    outputs: dict[str, str] = Field(default_factory=dict)
    detail: str = Field("", max_length=10_000)
    force: bool = False


class ReportOut(BaseModel):
    accepted: bool
    reason: str


def _speaks(version: str) -> bool:
    """Whether the header names a protocol this server takes: ASCII digits only (``isdigit``
    says yes to ``²``), and few of them (``int`` refuses more than 4300)."""
    return version.isascii() and version.isdigit() and len(version) <= 9 and int(version) in PROTOCOLS


def _runner(call: Call, named: str) -> str:
    """The runner the call acts as: its token's principal, named the same in the body."""
    version = call.request.headers.get(HEADER, "")
    if not _speaks(version):
        takes = ", ".join(str(v) for v in sorted(PROTOCOLS))
        raise Problem(
            409,
            f"{PROTOCOL_REFUSAL} {takes}; the runner sent {version or 'none'} "
            f"in {HEADER}: upgrade the runner (or the server)",
        )
    if named != call.principal.name:
        raise Problem(403, f"{call.principal.name} may act only as runner {call.principal.name}, not {named}")
    return named


@API.op(
    "POST",
    "/runner/claim",
    summary="Claim ready jobs (a long poll)",
    action=Action.RUN_JOBS,
    tag="runners",
    body=ClaimIn,
    responses={200: ("the jobs claimed, each under a lease with its attempt as fencing token", ClaimOut)},
)
async def claim(call: Call) -> web.Response:
    """Answers as soon as jobs are claimed, or after `wait_s` with none. A runner is handed only
    jobs whose labels it all carries; a drained runner is handed none and told `draining`. It
    may carry only the labels granted to its token's principal (`label:NAME`): a claim with
    another is refused (403, naming them in `ungranted_labels`)."""
    runner = _runner(call, call.body.runner)
    body: ClaimIn = call.body
    if ungranted := call.principal.ungranted(body.labels):
        # (an environment's secrets go to runners by their labels, so a label is granted to
        # the runner's principal, not taken on its word)
        raise Problem(
            403,
            f"runner {runner} may not carry label {', '.join(ungranted)}: an operator grants "
            f"one with `shipyard access grant {runner} label:{ungranted[0]}`",
            ungranted_labels=ungranted,
        )
    shipyard = gw(call).shipyard
    orchestrator = shipyard.orchestrator
    loop = asyncio.get_running_loop()
    deadline = loop.time() + body.wait_s
    while True:
        flag = orchestrator.listen()  # (listening before the claim: no wake-up falls between)
        try:
            transport = call.request.transport
            if transport is None or transport.is_closing():
                # the runner went away (killed, partitioned): what it would take now would only
                # wait for its lease to run out and count as a lost attempt
                return reply(ClaimOut(assignments=[]))
            attendance = shipyard.attendance
            if await attendance.claiming(
                runner, labels=body.labels, version=body.version, capacity=body.capacity, lease_s=body.lease_s
            ):
                return reply(ClaimOut(assignments=[], draining=True))
            claimed = await orchestrator.claim(runner, body.limit, body.lease_s, body.labels)
            # secrets are opened here, as the assignment leaves for its runner (over TLS)
            taken = [open_assignment(a, gw(call).shipyard.secret_box) for a in claimed]
            left = deadline - loop.time()
            if taken or left <= 0:
                return reply(ClaimOut(assignments=[AssignmentOut.of(a) for a in taken]))
            # woken by this process' events; jobs another replica readied are found by claiming
            # again every poll interval
            again = min(left, gw(call).shipyard.settings.poll_interval)
            try:
                await asyncio.wait_for(flag.wait(), again)
            except TimeoutError:
                pass
        finally:
            orchestrator.unlisten(flag)


@API.op(
    "POST",
    "/runner/renew",
    summary="Renew the leases of the attempts a runner holds",
    action=Action.RUN_JOBS,
    tag="runners",
    body=HeldIn,
    responses={200: ("the attempts still held; the runner kills the others", KeptOut)},
)
async def renew(call: Call) -> web.Response:
    runner = _runner(call, call.body.runner)
    g = gw(call)
    await g.shipyard.attendance.renewing(runner, call.body.lease_s)
    held = [(a.job_id, a.attempt) for a in call.body.held]
    kept = await g.shipyard.orchestrator.db(g.shipyard.service.renew_leases, runner, held, call.body.lease_s)
    return reply(KeptOut(kept=sorted(kept)))


@API.op(
    "POST",
    "/runner/still-held",
    summary="Which attempts a runner still holds (without renewing)",
    action=Action.RUN_JOBS,
    tag="runners",
    body=HeldIn,
    responses={200: ("the attempts still held; the runner kills the others", KeptOut)},
)
async def still_held(call: Call) -> web.Response:
    """With `wait_s`, answers as soon as one of the attempts is no longer held (its run was
    canceled, a sibling failed, its lease moved on), or after `wait_s` with all of them."""
    runner = _runner(call, call.body.runner)
    body: HeldIn = call.body
    shipyard = gw(call).shipyard
    orchestrator = shipyard.orchestrator
    held = [(a.job_id, a.attempt) for a in body.held]
    everything = {job_id for job_id, _ in held}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + body.wait_s
    while True:
        flag = orchestrator.listen()  # (listening before the read: no change falls between)
        try:
            kept = await orchestrator.db(shipyard.service.still_held, runner, held)
            left = deadline - loop.time()
            transport = call.request.transport
            gone = transport is None or transport.is_closing()  # (the runner asks again)
            if kept != everything or left <= 0 or gone:
                return reply(KeptOut(kept=sorted(kept)))
            # woken by this process' events; a cancel on another replica is found by reading
            # again every poll interval
            try:
                await asyncio.wait_for(flag.wait(), min(left, shipyard.settings.poll_interval))
            except TimeoutError:
                pass
        finally:
            orchestrator.unlisten(flag)


class HeldQuery(Strict):
    runner: str = Field(min_length=1, max_length=200)


@API.op(
    "POST",
    "/runner/held",
    summary="Every attempt the server thinks a runner holds (on the runner's start)",
    action=Action.RUN_JOBS,
    tag="runners",
    body=HeldQuery,
    responses={200: ("what the runner held when it stopped", HoldingOut)},
)
async def held(call: Call) -> web.Response:
    runner = _runner(call, call.body.runner)
    g = gw(call)
    found = await g.shipyard.orchestrator.db(g.shipyard.service.jobs_held_by, runner)
    return reply(HoldingOut(held=[Holding(run_id=r, job_id=j, attempt=a) for r, j, a in found]))


@API.op(
    "POST",
    "/runner/runs-over",
    summary="Which runs are over, so their workspaces can go",
    action=Action.RUN_JOBS,
    tag="runners",
    body=RunsIn,
    responses={200: ("the runs that are over: ended, or unknown to this server", OverOut)},
)
async def runs_over(call: Call) -> web.Response:
    _runner(call, call.body.runner)
    g = gw(call)
    over = await g.shipyard.orchestrator.db(g.shipyard.service.runs_over, call.body.run_ids)
    return reply(OverOut(over=sorted(over)))


@API.op(
    "POST",
    "/runner/log",
    summary="Store a chunk of a job attempt's output",
    action=Action.RUN_JOBS,
    tag="runners",
    body=LogIn,
    responses={204: ("stored", None), **_RESPONSES},
)
async def append_log(call: Call) -> web.Response:
    runner = _runner(call, call.body.runner)
    g = gw(call)
    body = call.body
    chunks = [(c.stream, c.text) for c in body.chunks]
    stored = await g.write(g.shipyard.store.append_log, body.job_id, body.attempt, runner, chunks)
    if not stored:
        raise Problem(409, f"job {body.job_id} attempt {body.attempt} is not held by {runner}: log refused")
    return web.Response(status=204)


@API.op(
    "POST",
    "/runner/report",
    summary="Report how a job attempt ended (or that it was interrupted, lost, or ended late)",
    action=Action.RUN_JOBS,
    tag="runners",
    body=ReportIn,
    responses={200: ("the engine's answer", ReportOut), **_RESPONSES},
)
async def report(call: Call) -> web.Response:
    runner = _runner(call, call.body.runner)
    b = call.body
    actor = Actor(runner, "runner")
    command: CompleteJob | InterruptJob | ExpireLease | ReportLateResult
    if b.kind == "complete":
        command = CompleteJob(
            run_id=b.run_id,
            job_id=b.job_id,
            attempt=b.attempt,
            runner=runner,
            outcome=b.outcome,
            exit_code=b.exit_code,
            outputs=b.outputs,
            detail=b.detail,
            actor=actor,
        )
        g = gw(call)  # (masked here too: a result recovered after a restart was not, by its runner)
        command = await g.read(mask_report, g.shipyard.store, g.shipyard.secret_box, command)
    elif b.kind == "interrupt":
        command = InterruptJob(
            run_id=b.run_id, job_id=b.job_id, attempt=b.attempt, runner=runner, actor=actor
        )
    elif b.kind == "expire":
        g = gw(call)
        mine = await g.shipyard.orchestrator.db(g.shipyard.service.jobs_held_by, runner)
        if (b.run_id, b.job_id, b.attempt) not in {tuple(h) for h in mine}:
            raise Problem(409, f"job {b.job_id} attempt {b.attempt} is not held by {runner}")
        command = ExpireLease(run_id=b.run_id, job_id=b.job_id, attempt=b.attempt, force=b.force)
    else:
        command = ReportLateResult(
            run_id=b.run_id,
            job_id=b.job_id,
            attempt=b.attempt,
            runner=runner,
            outcome=b.outcome,
            exit_code=b.exit_code,
            actor=actor,
        )
    decision = await gw(call).shipyard.orchestrator.handle(command)
    call.audited = True  # (the engine audits runner reports as it is configured to)
    if not decision.accepted:
        raise Problem(409, decision.reason)
    return reply(ReportOut(accepted=True, reason=decision.reason))
