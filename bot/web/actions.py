"""What people do from the web view: the same commands Slack's buttons send (``core.commands``),
through the same service entry point, with the same rules (``core.access.authorize``: separation
of duties, who may clear a gate fixed when it opened). The engine audits each, refused ones too,
with channel ``web``."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from bot.web.pages import find
from bot.web.render import message, see_other
from bot.web.signin import WEB, Viewer, checked_form
from core.commands import (
    AbortRollout,
    ApproveGate,
    CancelRun,
    Command,
    PromoteRollout,
    RejectGate,
    RetryRun,
)
from core.model import Actor


def _promote(run: str, actor: Actor, step: str) -> PromoteRollout | str:
    """Promote the step the page showed (the run JSON's ``rollout.step``, from 1): refused once
    the rollout moved on from it."""
    if not step:
        return PromoteRollout(run_id=run, actor=actor)
    if not step.isdigit() or int(step) < 1:
        return f"Step {step!r} is not a step of a rollout."
    return PromoteRollout(run_id=run, actor=actor, step=int(step) - 1)


#: each action: the command it sends, from the run, the viewer's actor and the form
ACTIONS: dict[str, Callable[[str, Actor, dict[str, str]], Command | str]] = {
    "approve": lambda run, actor, form: ApproveGate(
        run_id=run, gate=form.get("gate", ""), actor=actor, comment=form.get("comment", "").strip()
    ),
    "reject": lambda run, actor, form: (
        RejectGate(run_id=run, gate=form.get("gate", ""), actor=actor, reason=form["reason"].strip())
        if form.get("reason", "").strip()
        else "Say why you reject it."
    ),
    "cancel": lambda run, actor, form: CancelRun(run_id=run, actor=actor, reason="canceled from the web"),
    "retry": lambda run, actor, form: RetryRun(run_id=run, actor=actor),
    "promote-canary": lambda run, actor, form: _promote(run, actor, form.get("step", "")),
    "abort": lambda run, actor, form: (
        AbortRollout(run_id=run, actor=actor, reason=form["reason"].strip())
        if form.get("reason", "").strip()
        else "Say why you abort it."
    ),
}


def actor(who: Viewer) -> Actor:
    return Actor(who.name, "web", who.principal)


async def act(request: web.Request) -> web.StreamResponse:
    """POST ``/ui/runs/{pipeline}/{number}/{action}``: the command, then back to the run page;
    a refusal is a page saying why, and nothing changed."""
    who, form = await checked_form(request)
    state = await find(request, who)
    make = ACTIONS.get(request.match_info["action"])
    if make is None:
        return message("Unknown action", f"There is no action {request.match_info['action']!r}.", 404, who)
    command = make(state.run.id, actor(who), form)
    if isinstance(command, str):
        return message("Refused", command, 400, who)
    decision = await request.app[WEB].gateway.handle(command)
    if not decision.accepted:
        return message("Refused", decision.reason, 403 if decision.refusal == "forbidden" else 409, who)
    target = decision.state.run if decision.state is not None and isinstance(command, RetryRun) else state.run
    return see_other(f"/ui/runs/{target.pipeline}/{target.number}")
