"""The trigger form's glue: ``/deploy`` alone opens it (``verbs.open_trigger_modal``), picking a
pipeline rebuilds it with that pipeline's fields (``trigger_form_picked``), and submitting it
starts the run, or asks first as ``/deploy run`` does, or says what is wrong field by field
(``submit_trigger_view``). The form itself, plain data in and Block Kit out, is ``forms``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bot.chat import forms
from bot.chat.confirm import ask_to_confirm, environments_of, guarded_environments, start_run
from bot.chat.parse import unstorable
from bot.chat.verbs import ChatBackend, Refusal, Reply, Who
from core.access import Action
from core.commands import TriggerRun
from core.errors import ShipyardError

#: the form's callback id: its view_submission is answered with ``submit_trigger_view``
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


async def trigger_form_picked(backend: ChatBackend, view: dict[str, Any], picked: str) -> dict[str, Any]:
    """``view`` rebuilt for the pipeline just picked in it, to put in its place (``views.update``)."""
    names = await backend.read(backend.reads.pipeline_names)
    channel = str(view.get("private_metadata") or "")
    return forms.trigger_view(names, channel, await _chosen(backend, picked))


async def pipeline_options(backend: ChatBackend, typed: str) -> list[dict[str, Any]]:
    """What the picker offers once the person has typed ``typed`` (past 100 pipelines)."""
    return forms.pipeline_options(await backend.read(backend.reads.pipeline_names), typed)


async def _chosen(backend: ChatBackend, name: str) -> forms.Chosen | None:
    info = await backend.read(backend.reads.pipeline, name)
    if info is None:
        return None
    definition = info.latest.definition
    targets = tuple(environments_of(definition))
    branches = (b for env in targets for b in backend.shipyard.settings.environment(env).branches)
    return forms.Chosen(
        definition,
        info.latest.version,
        guarded=tuple(guarded_environments(backend, definition, None)),
        branches=tuple(dict.fromkeys(branches)),
        environments=targets,
    )


async def submit_trigger_view(backend: ChatBackend, who: Who, view: dict[str, Any]) -> FormOutcome:
    """Start the run the submitted form describes, or ask first (as ``/deploy run`` does), or
    say what is wrong, field by field. ``who.slack_channel``: the form's ``private_metadata``."""
    values = forms.form_values(view)
    if unreadable := _unreadable(values):
        return FormOutcome(unreadable)
    if unstorable(who.slack_channel):  # (the form's private_metadata: not one of ours)
        return FormOutcome({forms.PIPELINE: "This form is not one of mine; open it again with /deploy"})
    picked = values.get(forms.PIPELINE)
    if picked is None:
        return FormOutcome({forms.PIPELINE: "Pick a pipeline"})
    chosen = await _chosen(backend, picked)
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
        report_to=who.report_to,
    )
    try:
        (await backend.principal(who.user)).require(Action.TRIGGER)
        if chosen.guarded:
            question = await ask_to_confirm(
                backend, who, command, chosen.definition, chosen.version, list(chosen.guarded)
            )
            return FormOutcome(reply=question)
        await start_run(backend, who, command)
    except Refusal as exc:
        return FormOutcome({forms.PIPELINE: str(exc)[:150]})
    except ShipyardError as exc:
        return FormOutcome({forms.PIPELINE: exc.message[:150]})
    return FormOutcome()


def _unreadable(values: dict[str, str | None]) -> dict[str, str]:
    """Fields holding a character no database stores, each told which (the database would
    fail on it, and the form would close with nothing said)."""
    found = {block: unstorable(value) for block, value in values.items() if value}
    return {block: f"Type it again without {char}" for block, char in found.items() if char}
