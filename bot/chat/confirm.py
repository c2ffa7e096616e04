"""The deploy question: before a run deploys to an environment that asks first
(``confirm: true``), show exactly what will go where and what is live there now, to the asker
alone, with a Deploy button that answers it within a minute (``forms.question``). Asked by
``/deploy run``, the trigger form, ``promote`` and ``rollback``; the button is registered in
``BUTTONS`` on import (``bot.chat``). ``start_run`` starts a run from chat, asked or not."""

from __future__ import annotations

import time

from bot.backend import now
from bot.chat import block_kit, forms
from bot.chat.cards import health_of
from bot.chat.verbs import BUTTONS, ChatBackend, Refusal, Reply, Who
from core.artifacts import as_built, check_deployable
from core.commands import ReportTarget, TriggerRun
from core.definition import PipelineDef, resolve_parameters
from core.errors import InvalidInput
from storage.artifacts import ArtifactStore


def _form_of(definition: PipelineDef | None) -> str:
    """``ref=… [region=…]``: how a pipeline's parameters are typed."""
    params = definition.parameters if definition is not None else []
    return " ".join(f"{q.name}=…" if q.required else f"[{q.name}=…]" for q in params)


def guarded_environments(backend: ChatBackend, definition: PipelineDef, deploy_to: str | None) -> list[str]:
    """The environments a run would deploy to (all of the pipeline's, or only ``deploy_to``
    for a promotion or rollback) that ask before a deploy starts."""
    targets = [deploy_to] if deploy_to is not None else environments_of(definition)
    return [env for env in targets if backend.shipyard.settings.environment(env).confirm]


def environments_of(definition: PipelineDef) -> list[str]:
    """The environments a pipeline's stages deploy to, each once, in stage order."""
    return list(dict.fromkeys(s.environment for s in definition.stages if s.environment))


async def start_run(backend: ChatBackend, who: Who, command: TriggerRun, *, answered: bool = False) -> Reply:
    """Trigger ``command`` (its ``report_to`` says where it reports in Slack). ``answered``: it
    answers a deploy question, whose place the reply takes; its idempotency key is the
    question's, so a second answer finds the run the first one started."""
    decision = await backend.decide(command)
    if not decision.accepted:
        if decision.refusal != "invalid":
            raise Refusal(decision.reason)
        info = await backend.read(backend.reads.pipeline, command.pipeline)
        form = _form_of(info.latest.definition if info else None)
        raise Refusal(f"{decision.reason}. Usage: `/deploy run {command.pipeline} {form}`")
    assert decision.state is not None
    ref = decision.state.run.ref
    if decision.duplicate:
        return Reply(f"Already started as *{ref}*: this question was answered.", replace=answered)
    if backend.on_run_started is not None:
        await backend.on_run_started(decision.state.run.id)
    if command.break_glass is not None:  # the channel is told, not only the admin
        return Reply(
            f":rotating_light: {block_kit.who(who.user)} broke the glass: *{ref}* goes through "
            f"freezes and required approvals. Reason: {command.break_glass}",
            public=True,
        )
    if answered:
        return Reply(
            f"Started *{ref}*, confirmed by {block_kit.who(who.user)} at {now():%H:%M:%S} UTC; "
            "its message follows in this channel.",
            replace=True,
        )
    return Reply(f"Started *{ref}*; its message follows in this channel.")


async def ask_first(
    backend: ChatBackend, who: Who, command: TriggerRun, *, always: bool = False
) -> Reply | None:
    """The deploy question for ``command`` if where it deploys asks first (``confirm: true``),
    or ``always``; None: it may start now."""
    info = await backend.read(backend.reads.pipeline, command.pipeline)
    if info is None:  # the engine says why it cannot start
        return None
    definition = info.latest.definition
    guarded = guarded_environments(backend, definition, command.deploy_to)
    if always and not guarded:
        guarded = [command.deploy_to] if command.deploy_to else environments_of(definition)
    if not guarded:
        return None
    return await ask_to_confirm(backend, who, command, definition, info.latest.version, guarded)


async def ask_to_confirm(
    backend: ChatBackend,
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
    filled = command
    if command.artifact_id is not None:
        found = await backend.read(ArtifactStore(backend.shipyard.store).get, command.artifact_id)
        if found is None:
            raise Refusal(f"No artifact `{command.artifact_id}` (see `/deploy artifacts`).")
        check_deployable(found)  # a bad one is refused now, not after the press
        artifact = found.ref
        built = await backend.read(backend.reads.run, found.run_id) if found.run_id else None
        filled = as_built(command, found, built.run if built is not None else None)
        artifact_revision = built.run.source_revision if built is not None else None
    branch = filled.branch
    try:
        params = resolve_parameters(definition, dict(filled.parameters))
    except InvalidInput as exc:  # say it now, not after the press
        form = _form_of(definition)
        raise Refusal(f"{exc.message}. Usage: `/deploy run {command.pipeline} {form}`") from None
    live = tuple([(env, await backend.read(backend.reads.current_deployment, env)) for env in environments])
    asked = forms.Question.new(
        time.time(),
        pipeline=command.pipeline,
        params=params,
        revision=command.source_revision,
        branch=branch,
        kind=command.kind,
        artifact=command.artifact_id,
        deploy_to=command.deploy_to,
        channel=who.slack_channel,
        asker=who.user,
    )
    if len(asked.value()) > forms.MAX_VALUE:
        raise Refusal(
            "These parameters are too long to carry in a Deploy button (Slack keeps 2000 characters); "
            "start this run over the REST API."
        )
    health = tuple([h for env in environments if (h := await health_of(backend, env)) is not None])
    facts = forms.Facts(definition, version, live, artifact, artifact_revision, health)
    text, blocks = forms.question(asked, facts)
    return Reply(text, blocks)


async def _confirmed(backend: ChatBackend, who: Who, value: str) -> Reply:
    """The Deploy button under a deploy question (``press`` says what a refusal was)."""
    try:
        asked = forms.Question.read(value)
    except (ValueError, KeyError, TypeError):
        return Reply(":warning: That button is not one of mine.")
    if asked.asker and asked.asker != who.user:
        return Reply(
            f":warning: That question was for {block_kit.who(asked.asker)}; ask yours: `{asked.again()}`"
        )
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
        # where the question was asked
        report_to=ReportTarget(asked.channel) if asked.channel else who.report_to,
    )
    return await start_run(backend, who, command, answered=True)


BUTTONS[block_kit.CONFIRM] = _confirmed
