"""Environment verbs: what runs where (``envs``, ``history``), who waits (``queue``, ``front``),
what is in the way (``why``), and deploying known artifacts (``promote``, ``rollback``)."""

from __future__ import annotations

import json
from datetime import datetime
from functools import partial

from bot.backend import now
from bot.chat import block_kit
from bot.chat.cards import healths
from bot.chat.confirm import ask_first
from bot.chat.health import EMOJI, said
from bot.chat.parse import Line
from bot.chat.verbs import BUTTONS, ChatBackend, Refusal, Reply, Who, _usage, verb
from core.access import Action
from core.blockers import run_blockers
from core.commands import MoveToFront, TriggerRun
from core.errors import CommandRefused
from core.model import RunState
from core.review import Review
from core.rollback import RollbackPlan
from core.states import RUN_TERMINAL
from storage.artifacts import ArtifactStore
from storage.reviews import ReviewStore

#: the button of rollback questions before they became deploy questions (``forms.question``)
ROLLBACK = "env_rollback"


def _at(when: datetime | None) -> str:
    return f"{when:%Y-%m-%d %H:%M} UTC" if when else "?"


@verb("envs", "envs", "what runs where, how healthy it is, and what holds each environment", words=0)
async def envs(backend: ChatBackend, who: Who, line: Line) -> Reply:
    names = await backend.environments()
    if not names:
        return Reply("No environments yet: a pipeline stage with `environment:` makes one.")
    rows = []
    health = await healths(backend, names)
    for env in names:
        live = await backend.read(backend.reads.current_deployment, env)
        what = (
            "nothing yet"
            if live is None
            else f"*{live.artifact or live.revision or '?'}* "
            f"({live.pipeline}#{live.run_number}, {_at(live.finished_at)})"
        )
        blockers = await backend.read(backend.shipyard.service.why, env, None)
        held = [b.what for b in blockers if b.kind in ("lock", "freeze", "busy", "queue")]
        shown = health.get(env)
        state = f" · {EMOJI[shown.state]} {said(shown).removeprefix(env + ' is ')}" if shown else ""
        rows.append(f"• *{env}*: {what}{state}" + (f" — {'; '.join(held)}" if held else ""))
    return Reply("\n".join(rows))


@verb("history", "history <environment>", "recent deployments to an environment", words=1)
async def history(backend: ChatBackend, who: Who, line: Line) -> Reply:
    if not line.words:
        raise Refusal(_usage("history"))
    env = line.words[0]
    found = await backend.read(backend.reads.deployments, env, 2**63 - 1, 10)
    if not found:
        raise Refusal(
            f"Nothing was deployed to `{env}` yet (environments: {', '.join(await backend.environments())})."
        )
    rows = [
        f"{'✅' if d.status == 'succeeded' else '❌'} {d.artifact or d.revision or '?'} — {d.kind}, "
        f"{d.pipeline}#{d.run_number} by {block_kit.who(d.triggered_by)}, {_at(d.finished_at)} ({d.status})"
        for d in found
    ]
    return Reply(f"*{env}*, newest first:\n" + "\n".join(rows))


@verb(
    "queue",
    "queue <environment>",
    "what deploys to an environment now and what waits, with estimates",
    words=1,
)
async def queue(backend: ChatBackend, who: Who, line: Line) -> Reply:
    if not line.words:
        raise Refusal(_usage("queue"))
    await backend.require_environment(line.words[0])
    q = await backend.read(backend.shipyard.service.queue, line.words[0])
    head = f"*{q.environment}*: " + (
        f"{q.running[1]} is deploying (since {_at(q.running_since)})" if q.running else "nothing deploying"
    )
    rows = [head]
    for e in q.waiting:
        eta = f", expected to start around {e.eta:%H:%M} UTC" if e.eta else ""
        rows.append(f"{e.position}. {e.ref}{eta}")
    if not q.waiting:
        rows.append("Nobody waits.")
    return Reply("\n".join(rows))


@verb(
    "front",
    "front <run> <reason>",
    "move a queued run to the front of its environment's queue (admins)",
    Action.MANAGE,
)
async def front(backend: ChatBackend, who: Who, line: Line) -> Reply:
    if len(line.words) < 2:
        raise Refusal(_usage("front"))
    state = await backend.find(line.words[0])
    decision = await backend.decide(
        MoveToFront(run_id=state.run.id, actor=who.actor, reason=" ".join(line.words[1:]))
    )
    if not decision.accepted:
        raise Refusal(decision.reason)
    return Reply(
        f"{block_kit.who(who.user)} moved *{state.run.ref}* to the front of the queue: "
        f"{' '.join(line.words[1:])}",
        public=True,
    )


@verb(
    "why",
    "why <environment> [pipeline] | why <run>",
    "every reason a deployment there would wait or be refused now; or what a run waits for",
    words=2,
)
async def why(backend: ChatBackend, who: Who, line: Line) -> Reply:
    if not line.words:
        raise Refusal(_usage("why"))
    word = line.words[0]
    if "#" in word or (len(line.words) == 1 and word not in await backend.environments()):
        state = await backend.read(backend.reads.run, word, quick=True)
        if state is not None:
            return await why_run(backend, state)
        if "#" in word:
            raise Refusal(f"No run `{word}`. Name it like `web#42` (see `/deploy runs`).")
    env, pipeline = line.words[0], (line.words[1] if len(line.words) > 1 else None)
    await backend.require_environment(env, " Or name a run like `web#42`." if pipeline is None else "")
    if pipeline is not None:
        await backend.pipeline(pipeline)  # (an archived one: it would start nothing)
    found = await backend.read(backend.shipyard.service.why, env, pipeline)
    if not found:
        return Reply(
            f"Nothing stands in the way: a deployment{' of ' + pipeline if pipeline else ''} "
            f"to *{env}* would start now."
        )
    rows = [f"• *{b.kind}*: {b.what} — clears: {b.clears}" for b in found]
    return Reply(f"A deployment to *{env}* would wait or be refused:\n" + "\n".join(rows))


async def why_run(backend: ChatBackend, state: RunState) -> Reply:
    """What a run waits for, in the words of ``core.blockers`` (environments') and
    ``core.labels`` (runners')."""
    ref = state.run.ref
    if state.run.status in RUN_TERMINAL:
        return Reply(f"*{ref}* waits for nothing: it {state.run.status}.")
    queued_for = next((s.environment for s in state.stages if s.status == "queued" and s.environment), None)
    held = []
    if queued_for is not None:
        held = await backend.read(backend.shipyard.service.why, queued_for, state.run.pipeline)
    waits = await backend.read(backend.shipyard.runners.waits, state.jobs, now())
    found = run_blockers(state, held, waits)
    if not found:
        return Reply(f"*{ref}* is {state.run.status}: nothing holds it up now.")
    rows = [f"• *{b.kind}*: {b.what} — clears: {b.clears}" for b in found]
    return Reply(f"*{ref}* is {state.run.status}, waiting for:\n" + "\n".join(rows))


@verb(
    "promote",
    "promote <name@version> to <environment>",
    "deploy a known artifact there, without rebuilding",
    Action.TRIGGER,
)
async def promote(backend: ChatBackend, who: Who, line: Line) -> Reply:
    words = line.words
    if len(words) != 3 or words[1] != "to":
        raise Refusal(_usage("promote"))
    artifact = await backend.read(ArtifactStore(backend.shipyard.store).get, words[0])
    if artifact is None:
        raise Refusal(f"No artifact `{words[0]}` (see `/deploy artifacts`).")
    if artifact.pipeline is None:
        raise Refusal(
            f"{artifact.ref} was registered over the API; promote it with the REST API naming its pipeline."
        )
    env = words[2]
    command = TriggerRun(
        pipeline=artifact.pipeline,
        actor=who.actor,
        kind="promotion",
        artifact_id=artifact.ref,
        deploy_to=env,
        report_to=who.report_to,
    )
    question = await ask_first(backend, who, command)
    if question is not None:  # a confirm: true environment: the same question as /deploy run
        return question
    state = await backend.start(command)
    return Reply(f"Promoting *{artifact.ref}* to *{env}* as *{state.run.ref}*.", public=True)


@verb(
    "rollback",
    "rollback <environment> [to <version>]",
    "deploy the last good artifact there again (asks first)",
    Action.TRIGGER,
)
async def rollback(backend: ChatBackend, who: Who, line: Line) -> Reply:
    """Always asks, wherever it goes: the deploy question, showing the artifact it goes back to
    and what is live there now; its Deploy button starts one rollback however often pressed."""
    words = line.words
    if not words or len(words) not in (1, 3) or (len(words) == 3 and words[1] != "to"):
        raise Refusal(_usage("rollback"))
    plan = await _plan(backend, words[0], words[2] if len(words) == 3 else None)
    command = TriggerRun(
        pipeline=plan.pipeline,
        actor=who.actor,
        kind="rollback",
        artifact_id=plan.target.ref,
        deploy_to=plan.environment,
    )
    question = await ask_first(backend, who, command, always=True)
    if question is None:
        raise Refusal(f"{plan.pipeline}, which deployed {plan.target.ref}, is not a pipeline any more.")
    return question


async def _plan(backend: ChatBackend, env: str, to: str | None) -> RollbackPlan:
    try:
        return await backend.read(backend.shipyard.service.rollback_plan, env, to)
    except CommandRefused as exc:
        raise Refusal(exc.message) from None


async def _expired_rollback(backend: ChatBackend, who: Who, value: str) -> Reply:
    """A Roll back button from before rollbacks asked the deploy question: those asked for two
    minutes at most, so it has expired."""
    try:
        env = str(json.loads(value)["env"])
    except (ValueError, KeyError, TypeError):
        return Reply(":warning: That button is not one of mine.")
    return Reply(f":warning: That question expired; type `/deploy rollback {env}` again.")


async def _asked_to_roll_back(backend: ChatBackend, who: Who, value: str) -> Reply:
    try:
        env = str(json.loads(value)["env"])
    except (ValueError, KeyError, TypeError):
        return Reply(":warning: That button is not one of mine.")
    (await backend.principal(who.user)).require(Action.TRIGGER)
    return await rollback(backend, who, Line("rollback", [env]))


BUTTONS[ROLLBACK] = _expired_rollback
BUTTONS[block_kit.ROLLBACK_ASK] = _asked_to_roll_back


# -- break-glass reviews ---------------------------------------------------------------------------
REVIEW_ACK = "review_ack"


async def acknowledge(backend: ChatBackend, who: Who, ref: str) -> Reply:
    state = await backend.find(ref)
    (await backend.principal(who.user)).require(Action.APPROVE)
    requested = state.run.requested_by or (state.run.triggered_by,)
    review_store = ReviewStore(backend.shipyard.store)
    await backend.write(
        partial(review_store.acknowledge, channel=who.actor.channel, ref=state.run.ref),
        state.run.id,
        who.user,
        tuple(requested),
        now(),
    )
    return Reply(
        f":white_check_mark: {block_kit.who(who.user)} acknowledged the break-glass review of "
        f"*{state.run.ref}*.",
        public=True,
    )


@verb(
    "ack",
    "ack <run>",
    "acknowledge the follow-up review of a break-glass run (not its admin)",
    Action.APPROVE,
    words=1,
)
async def ack(backend: ChatBackend, who: Who, line: Line) -> Reply:
    if not line.words:
        raise Refusal(_usage("ack"))
    return await acknowledge(backend, who, line.words[0])


async def _pressed_ack(backend: ChatBackend, who: Who, value: str) -> Reply:
    try:
        run_id = str(json.loads(value)["run"])
    except (ValueError, KeyError, TypeError):
        return Reply(":warning: That button is not one of mine.")
    return await acknowledge(backend, who, run_id)


def review_reminder(state: RunState, review: Review, at: datetime) -> tuple[str, list[block_kit.Block]]:
    """The thread's notice (then hourly reminders) that a break-glass run awaits its review."""
    late = " *It is overdue.*" if review.overdue(at) else f" Due by {review.due_at:%Y-%m-%d %H:%M} UTC."
    line = (
        f":rotating_light: {block_kit.who(review.admin)} broke the glass for *{state.run.ref}*: "
        f"{review.reason}. "
        f"Someone else must review what was done and acknowledge it.{late}"
    )
    button = block_kit.button("Acknowledge review", REVIEW_ACK, json.dumps({"run": state.run.id}), "primary")
    return f"{state.run.ref}: break-glass review needed", [
        block_kit.text(line),
        block_kit.actions(f"review-{state.run.id}", button),
    ]


BUTTONS[REVIEW_ACK] = _pressed_ack
