"""The ``/deploy`` verbs. Each takes who is asking and the parsed line and returns a ``Reply``;
Slack and the console only deliver it. Roles are checked here for every verb, with the same
``core.access`` rules the REST API uses, except approving and rejecting a gate: as over REST,
the engine alone decides those, by what the caller held when the gate opened, and its refusal
says why. The engine adds its own rules (separation of duties)."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bot.backend import Backend, now
from bot.chat import blocks as bk
from bot.chat import forms
from bot.chat.parse import Line, did_you_mean, parse
from core import schedule as timing
from core.access import Action, Principal, Role
from core.artifacts import check_deployable
from core.commands import (
    ApproveGate,
    CancelRun,
    Command,
    FailRun,
    PauseRun,
    RejectGate,
    ResumeRun,
    RetryRun,
    TriggerRun,
)
from core.definition import PipelineDef, resolve_parameters
from core.duration import format_duration
from core.engine import Decision
from core.errors import InvalidInput, ShipyardError
from core.model import Actor, Channel, RunState
from core.states import GateStatus
from storage.artifacts import ArtifactBook
from storage.reads import RunFilter
from storage.schedules import ScheduleBook


@dataclass(frozen=True, slots=True)
class Who:
    """The person typing: a principal name (a Slack user ID, or the console's user), the
    channel they typed in, and the door they came through."""

    user: str
    channel_id: str
    door: Channel = "slack"

    @property
    def actor(self) -> Actor:
        return Actor(self.user, self.door)


@dataclass
class Reply:
    text: str
    blocks: list[bk.Block] = field(default_factory=list)
    #: visible to the channel, not only to the person who asked
    public: bool = False
    #: a modal to open (Slack) instead of a message
    modal: dict[str, Any] | None = None
    #: for a button's answer: take the place of the message the button was on (its buttons go)
    replace: bool = False


#: post ``text`` (second) to a channel or a Slack user (first)
Tell = Callable[[str, str], Awaitable[object]]


class Desk(Backend):
    """The chat backend: a Backend plus who people are and where run messages go."""

    #: called with (run id, channel id) when a chat command starts a run (the notifier routes it)
    on_run_started: Callable[[str, str], Awaitable[None]] | None = None
    #: posts text to a channel or a person (Slack: ``chat.postMessage``; the console: a line in
    #: the terminal), for those a button's press concerns besides the presser; None: nobody is
    #: told (the change is made and audited all the same)
    tell: Tell | None = None

    def bind(self, yard: Any) -> None:
        super().bind(yard)
        #: people who opened App Home: their view is refreshed when what it shows changes
        self.home_viewers: set[str] = set()

    async def principal(self, user: str) -> Principal:
        return await self.read(self.directory.principal, user, now(), quick=True)

    async def start(self, command: TriggerRun, channel_id: str) -> RunState:
        """Start a run from chat: refused ones raise ``Refusal`` with the engine's reason; a
        started one is routed to the channel it was asked for in."""
        decision = await self.decide(command)
        if not decision.accepted or decision.state is None:
            raise Refusal(decision.reason)
        if self.on_run_started is not None:
            await self.on_run_started(decision.state.run.id, channel_id)
        return decision.state

    async def find(self, ref: str) -> RunState:
        state = await self.read(self.reads.run, ref, quick=True)
        if state is None:
            raise Refusal(f"No run `{ref}`. Name it like `web#42` (see `/deploy runs`).")
        return state


class Refusal(Exception):
    """A reply that says what was wrong; always ephemeral."""


Handler = Callable[[Desk, Who, Line], Awaitable[Reply]]


@dataclass(frozen=True, slots=True)
class Verb:
    name: str
    usage: str
    summary: str
    #: what the verb needs to be allowed; None for verbs anyone may use (help, whoami) and for
    #: approve and reject, which the engine decides by what the caller held when the gate opened
    action: Action | None
    handler: Handler


VERBS: dict[str, Verb] = {}
#: buttons other chat modules answer (action id → handler of the button's value)
Button = Callable[[Desk, Who, str], Awaitable[Reply]]
BUTTONS: dict[str, Button] = {}


def verb(
    name: str, usage: str, summary: str, action: Action | None = Action.READ
) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        VERBS[name] = Verb(name, usage, summary, action, handler)
        return handler

    return register


async def dispatch(desk: Desk, who: Who, text: str) -> Reply:
    """Answer one ``/deploy`` line. Every failure is a Reply saying what to type instead."""
    try:
        line = parse(text)
        if not line.verb:
            return await open_trigger_modal(desk, who)
        found = VERBS.get(line.verb)
        if found is None:
            raise Refusal(did_you_mean("command", line.verb, list(VERBS)) + " Try `/deploy help`.")
        if line.words[:1] == ["help"]:
            return Reply(f"`/deploy {found.usage}` — {found.summary}")
        if found.action is not None:
            principal = await desk.principal(who.user)
            if not principal.may(found.action):
                principal.require(found.action)
        return await found.handler(desk, who, line)
    except Refusal as exc:
        return Reply(f":warning: {exc}")
    except ShipyardError as exc:
        return Reply(f":warning: {exc.message}")


def _usage(name: str) -> str:
    return f"Usage: `/deploy {VERBS[name].usage}`"


async def _decide(desk: Desk, command: Command) -> Decision:
    decision = await desk.decide(command)
    if not decision.accepted:
        raise Refusal(decision.reason)
    return decision


# -- the verbs -------------------------------------------------------------------------------------
@verb("help", "help [command]", "what you can say", None)
async def help_(desk: Desk, who: Who, line: Line) -> Reply:
    if line.words and line.words[0] in VERBS:
        v = VERBS[line.words[0]]
        return Reply(f"`/deploy {v.usage}` — {v.summary}")
    rows = "\n".join(f"`/deploy {v.usage}` — {v.summary}" for v in VERBS.values())
    return Reply("Shipyard commands:\n" + rows + "\n`/deploy` alone opens a form to start a run.")


@verb("whoami", "whoami", "your roles and groups", None)
async def whoami(desk: Desk, who: Who, line: Line) -> Reply:
    p = await desk.principal(who.user)
    roles = ", ".join(sorted(p.roles)) or "none (ask an admin: `shipyard access grant <your id> deployer`)"
    groups = ", ".join(sorted(p.groups)) or "none"
    return Reply(f"You are {bk.who(who.user)} (`{who.user}`). Roles: {roles}. Groups: {groups}.")


@verb("list", "list", "the pipelines you can run")
async def list_pipelines(desk: Desk, who: Who, line: Line) -> Reply:
    found = await desk.read(desk.reads.pipelines, None, 100)
    if not found:
        return Reply("No pipelines yet.")
    rows = []
    for p in found:
        params = " ".join(
            f"{q.name}=…" if q.required else f"[{q.name}=…]" for q in p.latest.definition.parameters
        )
        rows.append(f"• *{p.name}* v{p.latest.version} — {p.latest.definition.description or ''} `{params}`")
    return Reply("\n".join(rows))


@verb("runs", "runs [pipeline] [--stuck]", "the latest runs; --stuck: the zombies, with a Cancel button each")
async def list_runs(desk: Desk, who: Who, line: Line) -> Reply:
    if "--stuck" in line.words:
        return await _stuck_runs(desk)
    pipeline = line.words[0] if line.words else None
    states = await desk.read(desk.reads.runs, RunFilter(pipeline=pipeline), None, 10)
    if not states and pipeline is not None:
        names = [p.name for p in await desk.read(desk.reads.pipelines, None, 200, True)]
        if pipeline not in names:
            raise Refusal(did_you_mean("pipeline", pipeline, names))
    if not states:
        return Reply("No runs yet." if pipeline is None else f"No runs of `{pipeline}` yet.")
    rows = [
        f"{bk.EMOJI.get(s.run.status, '')} *{s.run.ref}* {s.run.status} — {bk.who(s.run.triggered_by)}, "
        f"{s.run.created_at:%Y-%m-%d %H:%M} UTC"
        for s in states
    ]
    return Reply("\n".join(rows))


async def _stuck_runs(desk: Desk) -> Reply:
    found = await desk.stuck(20)
    limit = format_duration(desk.yard.settings.stuck_after_seconds)
    if not found:
        return Reply(f"No stuck runs: every unfinished run changed within the last {limit}.")
    summary = f"{len(found)} run(s) unchanged for over {limit}:"
    return Reply(summary, [bk.text(summary), *(b for s in found for b in bk.stuck_run(s))])


@verb(
    "run",
    'run <pipeline> [key=value…] [branch=…] [--break-glass "reason"]',
    "start a run (admins: --break-glass passes freezes and required approvals)",
    Action.TRIGGER,
)
async def run(desk: Desk, who: Who, line: Line) -> Reply:
    if not line.words:
        raise Refusal(_usage("run"))
    pipeline = line.words[0]
    found = {p.name: p for p in await desk.read(desk.reads.pipelines, None, 200)}
    if pipeline not in found:
        raise Refusal(did_you_mean("pipeline", pipeline, list(found)))
    words = line.words[1:]
    glass = None
    if "--break-glass" in words:
        at = words.index("--break-glass")
        if at + 1 >= len(words) or not words[at + 1].strip():
            raise Refusal('Say why you break the glass: `/deploy run <pipeline> … --break-glass "reason"`')
        glass = words[at + 1]
        del words[at : at + 2]
        (await desk.principal(who.user)).require(Action.MANAGE)
    if words:
        raise Refusal(f"Parameters look like `key=value`; what is `{words[0]}`? {_usage('run')}")
    latest = found[pipeline].latest
    declared = {p.name for p in latest.definition.parameters}
    # `revision=` and `branch=` are the run's own, unless the pipeline has parameters so named
    revision = None if "revision" in declared else line.params.pop("revision", None)
    branch = None if "branch" in declared else line.params.pop("branch", None)
    command = TriggerRun(
        pipeline=pipeline,
        actor=who.actor,
        parameters=dict(line.params),
        source_revision=revision,
        branch=branch,
        break_glass=glass,
    )
    guarded = _guarded(desk, latest.definition, command.deploy_to)
    if guarded and glass is None:  # break-glass asks no second question: the admin said why
        return await ask_to_confirm(desk, who, command, latest.definition, latest.version, guarded)
    return await start_run(desk, who, command)


def _form_of(definition: PipelineDef | None) -> str:
    """``ref=… [region=…]``: how a pipeline's parameters are typed."""
    params = definition.parameters if definition is not None else []
    return " ".join(f"{q.name}=…" if q.required else f"[{q.name}=…]" for q in params)


def _guarded(desk: Desk, definition: PipelineDef, deploy_to: str | None) -> list[str]:
    """The environments a run would deploy to (all of the pipeline's, or only ``deploy_to``
    for a promotion or rollback) that ask before a deploy starts."""
    targets = [deploy_to] if deploy_to is not None else _targets(definition)
    return [env for env in targets if desk.yard.settings.environment(env).confirm]


def _targets(definition: PipelineDef) -> list[str]:
    return list(dict.fromkeys(s.environment for s in definition.stages if s.environment))


async def start_run(
    desk: Desk, who: Who, command: TriggerRun, *, channel: str | None = None, answered: bool = False
) -> Reply:
    """Trigger ``command``; its run reports to ``channel`` (default: where ``who`` typed).
    ``answered``: it answers a deploy question, whose place the reply takes; its idempotency
    key is the question's, so a second answer finds the run the first one started."""
    decision = await desk.decide(command)
    if not decision.accepted:
        if decision.refusal != "invalid":
            raise Refusal(decision.reason)
        info = await desk.read(desk.reads.pipeline, command.pipeline)
        form = _form_of(info.latest.definition if info else None)
        raise Refusal(f"{decision.reason}. Usage: `/deploy run {command.pipeline} {form}`")
    assert decision.state is not None
    ref = decision.state.run.ref
    if decision.duplicate:
        return Reply(f"Already started as *{ref}*: this question was answered.", replace=answered)
    if desk.on_run_started is not None:
        await desk.on_run_started(decision.state.run.id, channel or who.channel_id)
    if command.break_glass is not None:  # the channel is told, not only the admin
        return Reply(
            f":rotating_light: {bk.who(who.user)} broke the glass: *{ref}* goes through "
            f"freezes and required approvals. Reason: {command.break_glass}",
            public=True,
        )
    if answered:
        return Reply(
            f"Started *{ref}*, confirmed by {bk.who(who.user)} at {now():%H:%M:%S} UTC; "
            "its message follows in this channel.",
            replace=True,
        )
    return Reply(f"Started *{ref}*; its message follows in this channel.")


async def ask_first(desk: Desk, who: Who, command: TriggerRun, *, always: bool = False) -> Reply | None:
    """The deploy question for ``command`` if where it deploys asks first (``confirm: true``),
    or ``always``; None: it may start now."""
    info = await desk.read(desk.reads.pipeline, command.pipeline)
    if info is None:  # the engine says why it cannot start
        return None
    definition = info.latest.definition
    guarded = _guarded(desk, definition, command.deploy_to)
    if always and not guarded:
        guarded = [command.deploy_to] if command.deploy_to else _targets(definition)
    if not guarded:
        return None
    return await ask_to_confirm(desk, who, command, definition, info.latest.version, guarded)


async def ask_to_confirm(
    desk: Desk,
    who: Who,
    command: TriggerRun,
    definition: PipelineDef,
    version: int,
    environments: list[str],
) -> Reply:
    """Show exactly what will go where, and what is live there now, before it starts: a
    question for ``who`` alone with a Deploy button that answers it within a minute. For a
    promotion or rollback, the artifact and what it was built from (its run's parameters and
    branch, as the engine will fill them in)."""
    artifact = artifact_revision = None
    built_params: dict[str, str] = {}
    branch = command.branch
    if command.artifact_id is not None:
        found = await desk.read(ArtifactBook(desk.yard.store).get, command.artifact_id)
        if found is None:
            raise Refusal(f"No artifact `{command.artifact_id}` (see `/deploy artifacts`).")
        check_deployable(found)  # a bad one is refused now, not after the press
        artifact = found.ref
        built = await desk.read(desk.reads.run, found.run_id) if found.run_id else None
        if built is not None:
            artifact_revision = built.run.source_revision
            built_params = dict(built.run.parameters)
            branch = branch or built.run.branch
    try:
        params = resolve_parameters(definition, {**built_params, **command.parameters})
    except InvalidInput as exc:  # say it now, not after the press
        form = _form_of(definition)
        raise Refusal(f"{exc.message}. Usage: `/deploy run {command.pipeline} {form}`") from None
    live = tuple([(env, await desk.read(desk.reads.current_deployment, env)) for env in environments])
    asked = forms.Question.new(
        time.time(),
        pipeline=command.pipeline,
        params=params,
        revision=command.source_revision,
        branch=branch,
        kind=command.kind,
        artifact=command.artifact_id,
        deploy_to=command.deploy_to,
        channel=who.channel_id,
        asker=who.user,
    )
    if len(asked.value()) > forms.MAX_VALUE:
        raise Refusal(
            "These parameters are too long to carry in a Deploy button (Slack keeps 2000 characters); "
            "start this run over the REST API."
        )
    facts = forms.Facts(definition, version, live, artifact, artifact_revision)
    text, blocks = forms.question(asked, facts)
    return Reply(text, blocks)


@verb("status", "status <run>", "where a run is")
async def status(desk: Desk, who: Who, line: Line) -> Reply:
    if not line.words:
        raise Refusal(_usage("status"))
    state = await desk.find(line.words[0])
    summary, blocks = bk.run_message(state)
    return Reply(summary, blocks)


@verb("logs", "logs <run> [stage/job]", "the last lines of a job's output")
async def logs(desk: Desk, who: Who, line: Line) -> Reply:
    if not line.words:
        raise Refusal(_usage("logs"))
    state = await desk.find(line.words[0])
    names = {f"{state.stages[j.stage_index].name}/{j.name}": j for j in state.jobs}
    if len(line.words) > 1:
        job = names.get(line.words[1]) or next((j for j in state.jobs if j.name == line.words[1]), None)
        if job is None:
            raise Refusal(did_you_mean("job", line.words[1], list(names)))
    else:  # the most interesting job: the last failed one, else the last that started
        started = [j for j in state.jobs if j.started_at is not None]
        failed = [j for j in started if j.failed]
        if not started:
            return Reply(f"No job of {state.run.ref} has started yet.")
        job = (failed or started)[-1]
    tail = await desk.read(desk.yard.store.tail_log, job.id, 30)
    name = f"{state.stages[job.stage_index].name}/{job.name}"
    body = "\n".join(tail) or "(no output)"
    return Reply(f"{state.run.ref} {name} ({job.status}):\n```{body[-2900:]}```")


def _control(name: str, make: Callable[[str, Actor, str], Command], done: str) -> None:
    async def handler(desk: Desk, who: Who, line: Line) -> Reply:
        if not line.words:
            raise Refusal(_usage(name))
        state = await desk.find(line.words[0])
        (await desk.principal(who.user)).require(Action.CONTROL, state.run)
        reason = " ".join(line.words[1:])
        decision = await _decide(desk, make(state.run.id, who.actor, reason))
        assert decision.state is not None
        return Reply(done.format(ref=decision.state.run.ref), public=True)

    handler.__name__ = name
    summary = CONTROL_SUMMARIES[name]
    reason = " [reason]" if name in ("cancel", "fail") else ""
    verb(name, f"{name} <run>{reason}", summary, Action.CONTROL)(handler)


CONTROL_SUMMARIES = {
    "cancel": "stop a run",
    "fail": "stop a run and mark it failed (e.g. its runner was lost mid-deploy)",
    "pause": "finish running jobs, start nothing new",
    "resume": "continue a paused run",
    "retry": "run a failed run again from where it failed",
}


_control("cancel", lambda run, a, why: CancelRun(run_id=run, actor=a, reason=why), "{ref} canceled.")
_control("fail", lambda run, a, why: FailRun(run_id=run, actor=a, reason=why), "{ref} marked failed.")
_control("pause", lambda run, a, why: PauseRun(run_id=run, actor=a), "{ref} paused.")
_control("resume", lambda run, a, why: ResumeRun(run_id=run, actor=a), "{ref} resumed.")
_control("retry", lambda run, a, why: RetryRun(run_id=run, actor=a), "Retrying as {ref}.")


async def _open_gate(desk: Desk, ref: str) -> tuple[RunState, str]:
    state = await desk.find(ref)
    gate = next((g for g in state.gates if g.status is GateStatus.OPEN and g.kind == "manual"), None)
    if gate is None:
        raise Refusal(f"{state.run.ref} has no gate waiting for people (it is {state.run.status}).")
    return state, gate.id


# who may clear a gate is fixed when it opens: the engine checks the roles and groups held then
# (core.access.check_approver), so a role revoked since still counts and one granted since does not
@verb("approve", "approve <run> [comment]", "approve the gate a run waits at", None)
async def approve(desk: Desk, who: Who, line: Line) -> Reply:
    if not line.words:
        raise Refusal(_usage("approve"))
    state, gate = await _open_gate(desk, line.words[0])
    comment = " ".join(line.words[1:])
    await _decide(desk, ApproveGate(run_id=state.run.id, gate=gate, actor=who.actor, comment=comment))
    return Reply(f"{bk.who(who.user)} approved {state.run.ref}.", public=True)


@verb("reject", "reject <run> <reason>", "reject the gate a run waits at (the run fails)", None)
async def reject(desk: Desk, who: Who, line: Line) -> Reply:
    if len(line.words) < 2:
        raise Refusal("Say why: " + _usage("reject"))
    state, gate = await _open_gate(desk, line.words[0])
    reason = " ".join(line.words[1:])
    await _decide(desk, RejectGate(run_id=state.run.id, gate=gate, actor=who.actor, reason=reason))
    return Reply(f"{bk.who(who.user)} rejected {state.run.ref}: {reason}", public=True)


# -- schedules -----------------------------------------------------------------------------------
@verb(
    "schedule",
    'schedule <pipeline> "<cron>" [tz=Europe/Berlin] [key=value…]',
    "run a pipeline on a schedule (you own it; its runs are yours)",
    Action.TRIGGER,
)
async def schedule(desk: Desk, who: Who, line: Line) -> Reply:
    if len(line.words) != 2:
        raise Refusal(
            'Put the cron expression in quotes: `/deploy schedule web "0 2 * * 1-5" tz=Europe/Berlin`'
        )
    pipeline, expression = line.words
    names = [p.name for p in await desk.read(desk.reads.pipelines, None, 200)]
    if pipeline not in names:
        raise Refusal(did_you_mean("pipeline", pipeline, names))
    tz = line.params.pop("tz", "UTC")
    expression = timing.check_cron(expression)
    timing.zone(tz)
    at = now()
    book = ScheduleBook(desk.yard.store)
    created = await desk.write(
        lambda: book.new(
            pipeline=pipeline,
            cron=expression,
            timezone=tz,
            parameters=dict(line.params),
            owner=who.user,
            source="slack",
            grace_s=timing.DEFAULT_GRACE_S,
            next_fire_at=timing.next_fire(expression, tz, at),
            now=at,
        )
    )
    return Reply(
        f"Scheduled `{created.id[:8]}`: {created.describe()}; next run "
        f"{created.next_fire_at:%Y-%m-%d %H:%M} UTC. Remove it with `/deploy unschedule {created.id[:8]}`.",
        public=True,
    )


@verb("schedules", "schedules [pipeline]", "the schedules and when each fires next")
async def schedules(desk: Desk, who: Who, line: Line) -> Reply:
    found = await desk.read(ScheduleBook(desk.yard.store).all, line.words[0] if line.words else None)
    if not found:
        return Reply('No schedules. Add one: `/deploy schedule web "0 2 * * 1-5" tz=Europe/Berlin`')
    rows = [
        f"`{s.id[:8]}` {s.describe()} — next {s.next_fire_at:%Y-%m-%d %H:%M} UTC, by {bk.who(s.owner)}"
        + (" (pipeline file)" if s.source == "file" else "")
        for s in found[:40]
    ]
    return Reply("\n".join(rows))


@verb("unschedule", "unschedule <id>", "remove a schedule you own", Action.TRIGGER)
async def unschedule(desk: Desk, who: Who, line: Line) -> Reply:
    if not line.words:
        raise Refusal(_usage("unschedule"))
    book = ScheduleBook(desk.yard.store)
    matches = [s for s in await desk.read(book.all, None) if s.id.startswith(line.words[0])]
    if len(matches) != 1:
        raise Refusal(f"No single schedule starts with `{line.words[0]}`; see `/deploy schedules`.")
    found = matches[0]
    if found.source == "file":
        raise Refusal(f"That schedule is declared in {found.pipeline}'s pipeline file; change the file.")
    principal = await desk.principal(who.user)
    if found.owner != who.user and Role.ADMIN not in principal.roles:
        raise Refusal(f"That schedule belongs to {bk.who(found.owner)}; only they or an admin may remove it.")
    await desk.write(book.remove, found.id, now())
    return Reply(f"Removed schedule `{found.id[:8]}` ({found.describe()}).", public=True)


# -- buttons -------------------------------------------------------------------------------------
async def press(desk: Desk, who: Who, action_id: str, value: str, reason: str = "") -> Reply | None:
    """A button on a run message or gate card. The engine decides; a refusal (your own run,
    not an approver, the gate already decided) is a Reply for the presser alone; None when
    the press went through (the run's message shows the result)."""
    if action_id == bk.CONFIRM:
        return await _confirmed(desk, who, value)
    if action_id in BUTTONS:
        try:
            return await BUTTONS[action_id](desk, who, value)
        except Refusal as exc:
            return Reply(f":warning: {exc}")
        except ShipyardError as exc:
            return Reply(f":warning: {exc.message}")
    try:
        ref = json.loads(value)
        run_id, gate = str(ref["run"]), str(ref.get("gate", ""))
    except (ValueError, KeyError, TypeError):
        return Reply(":warning: That button is not one of mine.")
    command: Command
    # Approve and Reject: the engine decides by what the presser held when the gate opened
    control = True
    if action_id == bk.APPROVE:
        control, command = False, ApproveGate(run_id=run_id, gate=gate, actor=who.actor)
    elif action_id == bk.REJECT:
        if not reason.strip():
            return Reply(":warning: Say why you reject it.")
        control, command = False, RejectGate(run_id=run_id, gate=gate, actor=who.actor, reason=reason)
    elif action_id == bk.CANCEL:
        command = CancelRun(run_id=run_id, actor=who.actor, reason="canceled from chat")
    elif action_id == bk.FAIL:
        command = FailRun(run_id=run_id, actor=who.actor, reason="marked failed from chat")
    elif action_id == bk.RETRY:
        command = RetryRun(run_id=run_id, actor=who.actor)
    elif action_id == bk.IGNORE:  # a judgment call: only people who may also clear gates
        if not (await desk.principal(who.user)).may(Action.APPROVE):
            return Reply(":warning: Ignoring a failure needs the approver role, like clearing a gate.")
        command = RetryRun(run_id=run_id, actor=who.actor, ignore_failure=True)
    else:
        return Reply(f":warning: Unknown button {action_id!r}.")
    try:
        state = await desk.find(run_id)
        if (decided := _decided(state, gate)) is not None:
            return decided
        if control:
            (await desk.principal(who.user)).require(Action.CONTROL, state.run)
        decision = await desk.decide(command)
        if not decision.accepted:
            raise Refusal(decision.reason)
    except Refusal as exc:
        return Reply(f":warning: {exc}")
    except ShipyardError as exc:
        return Reply(f":warning: {exc.message}")
    if isinstance(command, RetryRun) and decision.state is not None and desk.on_run_started is not None:
        # the new run reports where its predecessor did
        await desk.on_run_started(decision.state.run.id, who.channel_id)
    return None


def _decided(state: RunState, gate: str) -> Reply | None:
    """A gate that is no longer open, told as its card now shows it (who decided, when, why)."""
    found = state.find_gate(gate) if gate else None
    if found is None or found.status is GateStatus.OPEN:
        return None
    return Reply(f"{state.run.ref}, gate {found.stage_name}: {bk.gate_outcome(found)}")


async def already_decided(desk: Desk, value: str) -> Reply | None:
    """For a gate card's button: the gate's outcome if it was decided meanwhile, else None."""
    try:
        ref = json.loads(value)
        run_id, gate = str(ref["run"]), str(ref.get("gate", ""))
    except (ValueError, KeyError, TypeError):
        return None
    state = await desk.read(desk.reads.run, run_id, quick=True)
    return _decided(state, gate) if state is not None else None


async def _confirmed(desk: Desk, who: Who, value: str) -> Reply:
    """The Deploy button under a deploy question."""
    try:
        asked = forms.Question.read(value)
    except (ValueError, KeyError, TypeError):
        return Reply(":warning: That button is not one of mine.")
    if asked.asker and asked.asker != who.user:
        return Reply(f":warning: That question was for {bk.who(asked.asker)}; ask yours: `{asked.again()}`")
    if time.time() > asked.until:
        return Reply(f":warning: That question expired; type `{asked.again()}` again.", replace=True)
    command = TriggerRun(
        pipeline=asked.pipeline,
        actor=who.actor,
        parameters=asked.params,
        source_revision=asked.revision,
        branch=asked.branch,
        kind=asked.kind,
        artifact_id=asked.artifact,
        deploy_to=asked.deploy_to,
        idempotency_key=asked.idempotency_key if asked.id else None,
    )
    try:
        (await desk.principal(who.user)).require(Action.TRIGGER)
        return await start_run(desk, who, command, channel=asked.channel or None, answered=True)
    except Refusal as exc:
        return Reply(f":warning: {exc}")
    except ShipyardError as exc:
        return Reply(f":warning: {exc.message}")


# -- the trigger form ------------------------------------------------------------------------------
TRIGGER_FORM = forms.TRIGGER_FORM
#: the form's pipeline picker: its block_actions is answered with ``trigger_form_picked``
TRIGGER_PICK = forms.PICK


@dataclass(frozen=True)
class FormOutcome:
    """What a submitted trigger form comes to."""

    #: what is wrong, by input block (Slack's ``response_action: errors``); empty: it went through
    errors: dict[str, str] = field(default_factory=dict)
    #: for the person once the form has closed: the deploy question, ephemeral in the channel
    #: the form was opened from (a direct message when there is none, or the bot is not in it)
    reply: Reply | None = None


async def open_trigger_modal(desk: Desk, who: Who) -> Reply:
    """``/deploy`` alone: a form to pick a pipeline; picking one shows its parameters."""
    names = [p.name for p in await desk.read(desk.reads.pipelines, None, forms.MAX_OPTIONS)]
    if not names:
        return Reply("No pipelines yet.")
    return Reply(
        "Start a run: pick a pipeline and fill in its parameters "
        "(or type `/deploy run <pipeline> key=value…`).",
        modal=forms.trigger_view(names, who.channel_id, None),
    )


async def trigger_form_picked(desk: Desk, view: dict[str, Any], picked: str) -> dict[str, Any]:
    """``view`` rebuilt for the pipeline just picked in it, to put in its place (``views.update``)."""
    names = [p.name for p in await desk.read(desk.reads.pipelines, None, forms.MAX_OPTIONS)]
    channel = str(view.get("private_metadata") or "")
    return forms.trigger_view(names, channel, await _chosen(desk, picked))


async def _chosen(desk: Desk, name: str) -> forms.Chosen | None:
    info = await desk.read(desk.reads.pipeline, name)
    if info is None:
        return None
    definition = info.latest.definition
    targets = tuple(_targets(definition))
    branches = (b for env in targets for b in desk.yard.settings.environment(env).branches)
    return forms.Chosen(
        definition,
        info.latest.version,
        guarded=tuple(_guarded(desk, definition, None)),
        branches=tuple(dict.fromkeys(branches)),
        environments=targets,
    )


async def submit_trigger_view(desk: Desk, who: Who, view: dict[str, Any]) -> FormOutcome:
    """Start the run the submitted form describes, or ask first (as ``/deploy run`` does), or
    say what is wrong, field by field. ``who.channel_id``: the form's ``private_metadata``."""
    values = forms.form_values(view)
    picked = values.get(forms.PIPELINE)
    if picked is None:
        return FormOutcome({forms.PIPELINE: "Pick a pipeline"})
    chosen = await _chosen(desk, picked)
    if chosen is None:
        return FormOutcome({forms.PIPELINE: f"There is no pipeline {picked} any more"})
    if forms.built_for(view) != picked:  # submitted before the pick's update landed
        return FormOutcome({forms.PIPELINE: f"These are not {picked}'s fields yet; look again and submit"})
    params, errors = forms.check_fields(chosen.definition, values)
    if errors:
        return FormOutcome(errors)
    command = TriggerRun(
        pipeline=picked,
        actor=who.actor,
        parameters=params,
        source_revision=values.get(forms.REVISION),
        branch=values.get(forms.BRANCH),
    )
    try:
        (await desk.principal(who.user)).require(Action.TRIGGER)
        if chosen.guarded:
            question = await ask_to_confirm(
                desk, who, command, chosen.definition, chosen.version, list(chosen.guarded)
            )
            return FormOutcome(reply=question)
        await start_run(desk, who, command)
    except Refusal as exc:
        return FormOutcome({forms.PIPELINE: str(exc)[:150]})
    except ShipyardError as exc:
        return FormOutcome({forms.PIPELINE: exc.message[:150]})
    return FormOutcome()
