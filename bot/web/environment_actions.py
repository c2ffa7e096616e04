"""What people do to an environment from the board: roll it back (after seeing what it goes
back to, as Slack asks first), promote what runs there to the next environment, lock and unlock
it. Rollbacks and promotions are new runs through the engine's rules; locks go through the same
store as Slack and REST, which audits them; a role refused here is audited too."""

from __future__ import annotations

from aiohttp import web

from bot.backend import now
from bot.web import board
from bot.web.render import Answer, message, page, see_other
from bot.web.signin import WEB, Viewer, checked_form
from core.access import Action, Role
from core.commands import TriggerRun
from core.errors import CommandRefused, ShipyardError
from core.locks import EnvironmentLocked, NotLockHolder, lock_duration
from core.model import Actor
from storage.locks import LockStore


def _actor(who: Viewer) -> Actor:
    return Actor(who.name, "web", who.principal)


async def _require(request: web.Request, who: Viewer, action: Action, what: str) -> None:
    if who.principal.may(action):
        return
    state = request.app[WEB]
    reason = f"{who.name} may not {what} (needs the {action} permission)"
    action_name = "web_" + what.replace(" ", "_")
    await state.gateway.write(state.sessions.refused, who.name, action_name, request.path, reason, now())
    raise Answer(message("Not allowed", reason, 403, who))


async def _known(request: web.Request, who: Viewer) -> str:
    env = request.match_info["env"]
    g = request.app[WEB].gateway
    if env in g.shipyard.settings.environments or env in await g.read(g.reads.environment_names):
        return env
    raise Answer(message("No such environment", f"There is no environment {env!r}.", 404, who))


async def _start(request: web.Request, who: Viewer, command: TriggerRun) -> web.Response:
    decision = await request.app[WEB].gateway.handle(command)
    if not decision.accepted or decision.state is None:
        return message("Refused", decision.reason, 403 if decision.refusal == "forbidden" else 409, who)
    run = decision.state.run
    return see_other(f"/ui/runs/{run.pipeline}/{run.number}")


async def rollback(request: web.Request) -> web.Response:
    """Without ``to``: the page that says what the environment goes back to, with the button;
    with ``to`` (that button): the rollback run."""
    who, form = await checked_form(request)
    env = await _known(request, who)
    await _require(request, who, Action.TRIGGER, "roll back")
    g = request.app[WEB].gateway
    try:
        plan = await g.read(g.shipyard.service.rollback_plan, env, None)
    except CommandRefused as exc:
        return message("Nothing to roll back to", exc.message, 409, who)
    if form.get("to") != plan.target.ref:
        return page("rollback.html", viewer=who, plan=plan, env=env)
    command = TriggerRun(
        pipeline=plan.pipeline, actor=_actor(who), kind="rollback", artifact_id=plan.target.ref, deploy_to=env
    )
    return await _start(request, who, command)


async def promote(request: web.Request) -> web.Response:
    """What runs in the environment, deployed to the next one on the path."""
    who, _ = await checked_form(request)
    env = await _known(request, who)
    g = request.app[WEB].gateway
    target = board.after(g.shipyard.settings.environments.path, env)
    current = await g.read(g.reads.current_deployment, env)
    if target is None or current is None or not current.artifact_id:
        why = f"{env} is the last environment on the path" if target is None else f"no artifact runs in {env}"
        return message("Nothing to promote", why, 409, who)
    command = TriggerRun(
        pipeline=current.pipeline,
        actor=_actor(who),
        kind="promotion",
        artifact_id=current.artifact_id,
        deploy_to=target,
    )
    return await _start(request, who, command)


async def lock(request: web.Request) -> web.Response:
    who, form = await checked_form(request)
    env = await _known(request, who)
    await _require(request, who, Action.CONTROL, "lock environments")
    reason = form.get("reason", "").strip()
    if not reason:
        return message("Refused", "Say why you lock it.", 400, who)
    try:
        seconds = lock_duration(form.get("duration") or None)
    except ShipyardError as exc:
        return message("Refused", exc.message, 400, who)
    store, at = LockStore(request.app[WEB].gateway.shipyard.store), now()
    try:
        await request.app[WEB].gateway.write(
            lambda: store.acquire(env, who.name, reason, seconds, at, channel="web")
        )
    except EnvironmentLocked as exc:
        return message("Refused", exc.told(str), 409, who)
    except ShipyardError as exc:
        return message("Refused", exc.message, 409, who)
    return see_other("/ui/environments")


async def unlock(request: web.Request) -> web.Response:
    who, _ = await checked_form(request)
    env = await _known(request, who)
    store, at = LockStore(request.app[WEB].gateway.shipyard.store), now()
    admin = Role.ADMIN in who.principal.roles
    deployer = who.principal.may(Action.CONTROL)
    try:
        await request.app[WEB].gateway.write(
            lambda: store.release(env, who.name, at, admin=admin, deployer=deployer, channel="web")
        )
    except NotLockHolder as exc:
        return message("Refused", exc.told(str), 403, who)
    except ShipyardError as exc:
        return message("Refused", exc.message, 409, who)
    return see_other("/ui/environments")
