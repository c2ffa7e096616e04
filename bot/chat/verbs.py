"""The ``/deploy`` language's registry: who is asking (``Who``), what they are answered
(``Reply``), the chat backend (``ChatBackend``), and the verbs and buttons every chat module registers
on import (``VERBS`` with ``@verb``, ``BUTTONS``), answered here by ``dispatch`` and ``press``.
Slack and the console only deliver the replies.

The families live beside this module and register themselves when ``bot.chat`` imports them:
runs (``runs``), gates (``gates``), schedules (``schedules``), the deploy question
(``confirm``), artifacts, environments and locks; the trigger form's glue is in
``trigger_form``. A verb's role is checked here before it asks or reads anything; every
command it then hands over carries the caller's principal (``ChatBackend.decide``), and
``core.access.authorize`` decides it as it does for every other door, gates included."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from bot.backend import Backend, now
from bot.chat import block_kit, forms
from bot.chat.parse import Line, did_you_mean, parse, unstorable
from core.access import Action, Principal
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
    ReportTarget,
    ResumeRun,
    RetryRun,
    TriggerRun,
)
from core.engine import Decision
from core.errors import ShipyardError
from core.model import Actor, Channel, RunState
from core.states import GateStatus
from storage.reads import PipelineInfo
from storage.slack import SlackState


@dataclass(frozen=True, slots=True)
class Who:
    """The person typing: a principal name (a Slack user ID, or the console's user), the
    Slack channel they typed in (``slack_channel``), and the channel of Shipyard they came
    through (``channel``: slack, console, …)."""

    user: str
    slack_channel: str
    channel: Channel = "slack"

    @property
    def actor(self) -> Actor:
        return Actor(self.user, self.channel)

    @property
    def report_to(self) -> ReportTarget | None:
        """Where a run they start reports in Slack: where they asked (None: not in Slack)."""
        if self.channel != "slack" or not self.slack_channel:
            return None
        return ReportTarget(self.slack_channel)


@dataclass
class Reply:
    text: str
    blocks: list[block_kit.Block] = field(default_factory=list)
    #: visible to the channel, not only to the person who asked
    public: bool = False
    #: a modal to open (Slack) instead of a message
    modal: dict[str, Any] | None = None
    #: for a button's answer: take the place of the message the button was on (its buttons go)
    replace: bool = False


#: post ``text`` (second) to a channel or a Slack user (first)
Tell = Callable[[str, str], Awaitable[object]]


class ChatBackend(Backend):
    """The chat backend: a Backend plus who people are and where run messages go."""

    #: called with the run id when a chat command starts a run (the console follows it; a run
    #: started from Slack carries where it reports on its command instead)
    on_run_started: Callable[[str], Awaitable[None]] | None = None
    #: posts text to a channel or a person (Slack: ``chat.postMessage``; the console: a line in
    #: the terminal), for those a button's press concerns besides the presser; None: nobody is
    #: told (the change is made and audited all the same)
    tell: Tell | None = None

    def bind(self, shipyard: Any) -> None:
        super().bind(shipyard)
        #: people who opened App Home: their view is refreshed when what it shows changes
        self.home_viewers: set[str] = set()

    async def principal(self, user: str) -> Principal:
        return await self.read(self.directory.principal, user, now(), quick=True)

    async def decide(self, command: Command) -> Decision:
        """Every command typed or pressed here carries what its user holds now, for
        ``core.access.authorize``."""
        actor = command.actor
        if actor.principal is None and actor.channel in ("slack", "console"):
            command = replace(command, actor=replace(actor, principal=await self.principal(actor.name)))
        return await self.handle(command)

    async def start(self, command: TriggerRun) -> RunState:
        """Start a run from chat: refused ones raise ``Refusal`` with the engine's reason."""
        decision = await self.decide(command)
        if not decision.accepted or decision.state is None:
            raise Refusal(decision.reason)
        if self.on_run_started is not None:
            await self.on_run_started(decision.state.run.id)
        return decision.state

    async def environments(self) -> list[str]:
        """Every environment: the declared ones in their path's order, then the others
        deployed to, by name."""
        known = await self.read(self.reads.environment_names)
        declared = self.shipyard.settings.environments.path
        return declared + sorted(set(known) - set(declared))

    async def require_environment(self, name: str, or_else: str = "") -> None:
        """Refuses an environment nothing declares or deploys to, naming the closest: a typo
        must not be answered as an environment where nothing waits, nor locked."""
        names = await self.environments()
        if name not in names:
            raise Refusal(did_you_mean("environment", name, names) + or_else)

    async def pipeline(self, name: str, *, archived: bool = False) -> PipelineInfo:
        """The pipeline ``name`` (``archived``: an archived one too), or ``Refusal`` naming the
        closest of all the pipelines there are."""
        info = await self.read(self.reads.pipeline, name)
        if info is not None and info.archived and not archived:
            raise Refusal(f"Pipeline `{name}` is archived: it starts no runs.")
        if info is None:
            names = await self.read(self.reads.pipeline_names, archived)
            raise Refusal(did_you_mean("pipeline", name, names))
        return info

    async def find(self, ref: str) -> RunState:
        state = await self.read(self.reads.run, ref, quick=True)
        if state is None:
            raise Refusal(f"No run `{ref}`. Name it like `web#42` (see `/deploy runs`).")
        return state


class Refusal(Exception):
    """A reply that says what was wrong; always ephemeral."""


Handler = Callable[[ChatBackend, Who, Line], Awaitable[Reply]]


@dataclass(frozen=True, slots=True)
class Verb:
    name: str
    usage: str
    summary: str
    #: what the verb needs to be allowed; None for verbs anyone may use (help, whoami) and for
    #: approve and reject, which the engine decides by what the caller held when the gate opened
    action: Action | None
    handler: Handler
    #: the most words it takes, and no ``key=value``; None: any (a reason, a comment, parameters)
    words: int | None = None


VERBS: dict[str, Verb] = {}
#: buttons other chat modules answer (action id → handler of the button's value)
Button = Callable[[ChatBackend, Who, str], Awaitable[Reply]]
BUTTONS: dict[str, Button] = {}


def verb(
    name: str, usage: str, summary: str, action: Action | None = Action.READ, *, words: int | None = None
) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        if name in VERBS:  # (a second one would silently replace the first)
            raise ValueError(f"two chat verbs are named {name!r}")
        VERBS[name] = Verb(name, usage, summary, action, handler, words)
        return handler

    return register


async def dispatch(backend: ChatBackend, who: Who, text: str) -> Reply:
    """Answer one ``/deploy`` line. Every failure is a Reply saying what to type instead."""
    try:
        line = parse(text)
        if not line.verb:
            return await open_trigger_modal(backend, who)
        found = VERBS.get(line.verb)
        if found is None:
            raise Refusal(did_you_mean("command", line.verb, list(VERBS)) + " Try `/deploy help`.")
        if line.words[:1] == ["help"]:
            return Reply(f"`/deploy {found.usage}` — {found.summary}")
        _refuse_extra(found, line)
        if found.action is not None:
            principal = await backend.principal(who.user)
            if not principal.may(found.action):
                principal.require(found.action)
        return await found.handler(backend, who, line)
    except Refusal as exc:
        return Reply(f":warning: {exc}")
    except ShipyardError as exc:
        return Reply(f":warning: {exc.message}")


def _refuse_extra(found: Verb, line: Line) -> None:
    """Words a verb would ignore are refused: ``status web#1 web#2`` must not answer for web#1
    alone as if that were all that was asked."""
    if found.words is None:
        return
    extra = [*line.words[found.words :], *(f"{k}={v}" for k, v in line.params.items())]
    if extra:
        raise Refusal(f"`{found.name}` does not take `{' '.join(extra)}`. {_usage(found.name)}")


def _usage(name: str) -> str:
    return f"Usage: `/deploy {VERBS[name].usage}`"


async def _decide(backend: ChatBackend, command: Command) -> Decision:
    decision = await backend.decide(command)
    if not decision.accepted:
        raise Refusal(decision.reason)
    return decision


# -- the verbs -------------------------------------------------------------------------------------
@verb("help", "help [command]", "what you can say", None, words=1)
async def help_(backend: ChatBackend, who: Who, line: Line) -> Reply:
    if line.words and line.words[0] in VERBS:
        v = VERBS[line.words[0]]
        return Reply(f"`/deploy {v.usage}` — {v.summary}")
    rows = "\n".join(f"`/deploy {v.usage}` — {v.summary}" for v in VERBS.values())
    return Reply("Shipyard commands:\n" + rows + "\n`/deploy` alone opens a form to start a run.")


@verb("whoami", "whoami", "your roles and groups", None, words=0)
async def whoami(backend: ChatBackend, who: Who, line: Line) -> Reply:
    p = await backend.principal(who.user)
    roles = ", ".join(sorted(p.roles)) or "none (ask an admin: `shipyard access grant <your id> deployer`)"
    groups = ", ".join(sorted(p.groups)) or "none"
    return Reply(f"You are {block_kit.who(who.user)} (`{who.user}`). Roles: {roles}. Groups: {groups}.")


# -- ``/deploy`` alone -----------------------------------------------------------------------------
async def open_trigger_modal(backend: ChatBackend, who: Who) -> Reply:
    """``/deploy`` alone: a form to pick a pipeline; picking one shows its parameters."""
    names = await backend.read(backend.reads.pipeline_names)
    if not names:
        return Reply("No pipelines yet.")
    return Reply(
        "Start a run: pick a pipeline and fill in its parameters "
        "(or type `/deploy run <pipeline> key=value…`).",
        modal=forms.trigger_view(names, who.slack_channel, None),
    )


# -- buttons -------------------------------------------------------------------------------------
async def press(backend: ChatBackend, who: Who, action_id: str, value: str, reason: str = "") -> Reply | None:
    """A button on a run message or gate card. The engine decides; a refusal (your own run,
    not an approver, the gate already decided) is a Reply for the presser alone; None when
    the press went through (the run's message shows the result)."""
    if _foreign(value) or unstorable(who.slack_channel):
        return Reply(":warning: That button is not one of mine.")
    if (char := unstorable(reason)) is not None:
        return Reply(f":warning: Cannot read the reason: it contains {char}; type it again without.")
    if action_id in BUTTONS:
        try:
            return await BUTTONS[action_id](backend, who, value)
        except (Refusal, ShipyardError) as exc:
            return _warning(exc)
    ref = _run_ref(value)
    if ref is None:
        return Reply(":warning: That button is not one of mine.")
    run_id, gate, *_ = ref
    try:
        command = await _button_command(backend, who, action_id, ref, reason)
        if isinstance(command, Reply):
            return command
        state = await backend.find(run_id)
        if (decided := _decided(state, gate)) is not None:
            return decided
        decision = await backend.decide(command)
        if not decision.accepted:
            raise Refusal(decision.reason)
    except (Refusal, ShipyardError) as exc:
        return _warning(exc)
    if isinstance(command, RetryRun) and decision.state is not None and backend.on_run_started is not None:
        await backend.on_run_started(decision.state.run.id)
    return None


async def _button_command(
    backend: ChatBackend, who: Who, action_id: str, ref: ButtonRef, reason: str
) -> Command | Reply:
    """The command a run or gate button stands for (who may press it is core.access.authorize's
    to say); a Reply when the press cannot become a command."""
    run_id, gate, step, stage = ref
    if action_id in (block_kit.LOOKS_GOOD, block_kit.VERIFY_ROLLBACK):
        # (the stage the message showed verifying: refused once its verification ended)
        passed = action_id == block_kit.LOOKS_GOOD
        verdict: Literal["passed", "failed"] = "passed" if passed else "failed"
        return EndVerification(
            run_id=run_id, verdict=verdict, rollback=None if passed else True, actor=who.actor, stage=stage
        )
    if action_id in (block_kit.PROMOTE, block_kit.PROMOTE_FULLY):
        # (the step the message showed: the engine refuses it once the rollout moved on; None
        # from a message posted before buttons carried it)
        full = action_id == block_kit.PROMOTE_FULLY
        return PromoteRollout(run_id=run_id, actor=who.actor, full=full, step=step)
    if action_id == block_kit.APPROVE:
        return ApproveGate(run_id=run_id, gate=gate, actor=who.actor)
    if action_id == block_kit.REJECT:
        if not reason.strip():
            return Reply(":warning: Say why you reject it.")
        return RejectGate(run_id=run_id, gate=gate, actor=who.actor, reason=reason)
    if (make := RUN_BUTTONS.get(action_id)) is not None:
        return make(run_id, who.actor, reason)
    if action_id == block_kit.RETRY:
        return RetryRun(run_id=run_id, actor=who.actor, report_to=await _reported(backend, who, run_id))
    if action_id == block_kit.IGNORE:
        report_to = await _reported(backend, who, run_id)
        return RetryRun(run_id=run_id, actor=who.actor, ignore_failure=True, report_to=report_to)
    return Reply(f":warning: Unknown button {action_id!r}.")


#: the run buttons that stand for one command each (action id → the command, given the run,
#: the presser and the reason a form asked for, if any)
RUN_BUTTONS: dict[str, Callable[[str, Actor, str], Command]] = {
    block_kit.CANCEL: lambda run, actor, why: CancelRun(run_id=run, actor=actor, reason="canceled from chat"),
    block_kit.FAIL: lambda run, actor, why: FailRun(
        run_id=run, actor=actor, reason="marked failed from chat"
    ),
    # (the rollout's Pause and Resume: refused for a run with no rollout under way)
    block_kit.PAUSE: lambda run, actor, why: PauseRun(run_id=run, actor=actor, rollout=True),
    block_kit.RESUME: lambda run, actor, why: ResumeRun(run_id=run, actor=actor, rollout=True),
    block_kit.ABORT: lambda run, actor, why: AbortRollout(run_id=run, actor=actor, reason=why.strip()),
}


#: what a run or gate button carries: the run id, the gate id ("" for none), the rollout
#: step a Promote button was shown at and the stage a verification's buttons were shown for
#: (None for the others, and from messages posted before buttons carried them)
ButtonRef = tuple[str, str, int | None, int | None]


def _index(ref: dict[str, object], name: str) -> int | None:
    value = ref.get(name)
    if value is not None and (type(value) is not int or value < 0):
        raise ValueError(f"{name} is not an index")
    return value


def _run_ref(value: str) -> ButtonRef | None:
    """What a run or gate button carries; None when the value is not one of ours."""
    if _foreign(value):
        return None
    try:
        ref = json.loads(value)
        return str(ref["run"]), str(ref.get("gate", "")), _index(ref, "step"), _index(ref, "stage")
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _foreign(value: str) -> bool:
    """A value no button of ours carries: one holding a character no database stores, as it
    is or escaped in the JSON it holds (the database would fail on it, with nobody told)."""
    try:
        decoded = json.loads(value)
    except ValueError:
        decoded = value
    return unstorable(value) is not None or any(unstorable(s) for s in _strings(decoded))


def _strings(data: object) -> Iterator[str]:
    """Every string in decoded JSON, keys included."""
    if isinstance(data, str):
        yield data
    elif isinstance(data, dict):
        for key, item in data.items():
            yield key
            yield from _strings(item)
    elif isinstance(data, list):
        for item in data:
            yield from _strings(item)


def _warning(exc: Refusal | ShipyardError) -> Reply:
    """A refusal, told to the presser alone."""
    return Reply(f":warning: {exc.message if isinstance(exc, ShipyardError) else exc}")


async def _reported(backend: ChatBackend, who: Who, run_id: str) -> ReportTarget | None:
    """Where a run retried by a button in its Slack message or thread reports: where the run
    did (its channel, and the thread it was in, if any)."""
    if who.report_to is None:
        return None
    found = await backend.read(SlackState(backend.shipyard.store).message, run_id, quick=True)
    return ReportTarget(found.channel, found.thread) if found is not None else who.report_to


def _decided(state: RunState, gate: str) -> Reply | None:
    """A gate that is no longer open, told as its card now shows it (who decided, when, why)."""
    found = state.find_gate(gate) if gate else None
    if found is None or found.status is GateStatus.OPEN:
        return None
    return Reply(f"{state.run.ref}, gate {found.stage_name}: {block_kit.gate_outcome(found)}")


async def already_decided(backend: ChatBackend, value: str) -> Reply | None:
    """For a gate card's button, before it asks for a reason: the gate's outcome if it was
    decided meanwhile, or that the button is not one of ours; else None."""
    ref = _run_ref(value)
    if ref is None:
        return Reply(":warning: That button is not one of mine.")
    run_id, gate, *_ = ref
    state = await backend.read(backend.reads.run, run_id, quick=True)
    return _decided(state, gate) if state is not None else None
