"""``/deploy lock production "incident 4711" [for 2h]``, ``/deploy unlock production``,
``/deploy locks``, and the lock buttons (``lock_blocks``). Registered on import (``bot.chat``):
the verbs in ``VERBS`` and the buttons in ``BUTTONS``, so Slack and the console answer them
through the same ``verbs.press``.

Locking and unlocking answer in the channel, so everyone sees the environment change hands;
refusals answer the person alone, saying who holds the lock, since when, why and until when."""

from __future__ import annotations

import logging

from bot.backend import now
from bot.chat import blocks as bk
from bot.chat import lock_blocks as lb
from bot.chat.parse import Line, did_you_mean
from bot.chat.verbs import BUTTONS, VERBS, Button, Desk, Refusal, Reply, Tell, Who, verb
from core.access import Action, Role
from core.errors import ShipyardError
from core.locks import EnvironmentLocked, Lock, NotLockHolder, split_for
from storage.locks import LockBook

log = logging.getLogger(__name__)


def tell_with(desk: Desk, tell: Tell) -> None:
    """Lock buttons pressed on ``desk`` tell the new holder, the asker and the deploy channel
    through ``tell``; the same as setting ``desk.tell``."""
    desk.tell = tell


def _book(desk: Desk) -> LockBook:
    return LockBook(desk.yard.store)


async def _known(desk: Desk, env: str) -> None:
    """Only an environment that exists may be locked: a typo must not lock nothing."""
    declared = desk.yard.settings.environments.path
    if env in declared:
        return
    deployed = await desk.read(desk.reads.environment_names)
    if env not in deployed:
        raise Refusal(did_you_mean("environment", env, sorted({*declared, *deployed})))


@verb(
    "lock",
    'lock <environment> "<reason>" [for 2h]',
    "lock an environment: no deployments until it is unlocked or the time runs out",
    Action.CONTROL,
)
async def lock(desk: Desk, who: Who, line: Line) -> Reply:
    words, seconds = split_for(line.words[1:])
    reason = " ".join([*words, *(f"{k}={v}" for k, v in line.params.items())]).strip()
    if not line.words or not reason:
        raise Refusal(f"Say which environment and why: `/deploy {VERBS['lock'].usage}`")
    env = line.words[0]
    if await desk.read(_book(desk).current, env, now()) is None:  # (a held one is refused by name)
        await _known(desk, env)
    at = now()
    book = _book(desk)
    try:
        locked = await desk.write(lambda: book.acquire(env, who.user, reason, seconds, at, channel=who.door))
    except EnvironmentLocked as exc:
        return Reply(*lb.refused(exc.lock, at))
    again = " (reason and expiry updated)" if locked.since != at else ""
    return Reply(
        f":lock: {lb.told(locked, at)}{again}. Unlock it with `/deploy unlock {env}`.",
        public=True,
    )


@verb("unlock", "unlock <environment>", "unlock an environment you locked (admins: any)", Action.CONTROL)
async def unlock(desk: Desk, who: Who, line: Line) -> Reply:
    if len(line.words) != 1:
        raise Refusal(f"Usage: `/deploy {VERBS['unlock'].usage}`")
    return await _release(desk, who, line.words[0])


async def _release(desk: Desk, who: Who, env: str) -> Reply:
    principal = await desk.principal(who.user)
    admin = Role.ADMIN in principal.roles
    deployer = principal.may(Action.CONTROL)
    book, at = _book(desk), now()
    try:
        gone = await desk.write(
            lambda: book.release(env, who.user, at, admin=admin, deployer=deployer, channel=who.door)
        )
    except NotLockHolder as exc:
        raise Refusal(exc.told(bk.who)) from None
    return Reply(released(gone, who.user), public=True)


def released(lock: Lock, by: str) -> str:
    if lock.kind == "rollback":
        return (
            f":white_check_mark: {bk.who(by)} acknowledged the rollback of *{lock.environment}*; "
            "it takes deployments again."
        )
    whose = "" if lock.holder == by else f" (locked by {bk.who(lock.holder)})"
    return f":unlock: {bk.who(by)} unlocked *{lock.environment}*{whose}: {lock.reason}."


@verb("locks", "locks", "the locked environments: who holds each, why and until when")
async def locks(desk: Desk, who: Who, line: Line) -> Reply:
    at = now()
    found = await desk.read(_book(desk).all, at)
    if not found:
        return Reply(f"No environment is locked. Lock one: `/deploy {VERBS['lock'].usage}`")
    return Reply("\n".join(f":lock: {lb.told(lock, at)}" for lock in found))


# -- buttons -------------------------------------------------------------------------------------
async def press_lock(desk: Desk, who: Who, action_id: str, value: str) -> Reply:
    """A lock button: Extend 1h and Release on a reminder, Hand over and Keep it on a handover
    question, Ask on a refusal, Acknowledge on a rollback lock. A button made for a lock that
    has since gone or changed hands answers with the environment as it is now."""
    ref = lb.read_value(value)
    if ref is None or action_id not in lb.ACTIONS:
        return Reply(":warning: That button is not one of mine.")
    env, at, book = ref["env"], now(), _book(desk)
    try:
        current = await desk.read(book.current, env, at)
        if action_id != lb.ASK and (current is None or current.since.isoformat() != ref.get("since")):
            state = "is not locked any more" if current is None else f"changed: {lb.told(current, at)}"
            return Reply(f"That button is for an earlier lock; {env} {state}.")
        return await _pressed(desk, who, action_id, env, ref)
    except (NotLockHolder, EnvironmentLocked) as exc:
        return Reply(f":warning: {exc.told(bk.who)}")
    except Refusal as exc:
        return Reply(f":warning: {exc}")
    except ShipyardError as exc:
        return Reply(f":warning: {exc.message}")


async def _pressed(desk: Desk, who: Who, action_id: str, env: str, ref: dict[str, str]) -> Reply:
    book, at = _book(desk), now()
    if action_id in (lb.RELEASE, lb.ACKNOWLEDGE):
        reply = await _release(desk, who, env)
        await _announce(desk, who, reply.text)
        return reply
    if action_id == lb.EXTEND:
        longer = await desk.write(lambda: book.extend(env, who.user, lb.EXTEND_S, at, channel=who.door))
        return Reply(f":lock: {lb.told(longer, at)}.")
    if action_id == lb.ASK:
        if not (await desk.principal(who.user)).may(Action.CONTROL):
            return Reply(":warning: Asking for a lock needs the deployer role, like locking.")
        asked = await desk.write(lambda: book.request_handover(env, who.user, at, channel=who.door))
        return Reply(
            f"Asked {bk.who(asked.holder)} to hand over the lock on *{env}*; their answer comes here."
        )
    if action_id == lb.HAND_OVER:
        to = ref.get("to", "")
        moved = await desk.write(lambda: book.hand_over(env, who.user, to, at, channel=who.door))
        if lb.slack_user(to):
            await _tell(desk, to, f":lock: {bk.who(who.user)} handed you the lock: {lb.told(moved, at)}.")
        await _announce(desk, who, f":lock: {bk.who(who.user)} handed the lock on *{env}* to {bk.who(to)}.")
        return Reply(f"You handed the lock on *{env}* to {bk.who(to)}.")
    kept, asker = await desk.write(lambda: book.keep(env, who.user, at, channel=who.door))
    if not lb.slack_user(asker):  # asked over the API: the lock shows the answer there
        return Reply(f"You keep the lock on *{env}*.")
    await _tell(desk, asker, f":lock: {bk.who(who.user)} keeps the lock for now: {lb.told(kept, at)}.")
    return Reply(f"You keep the lock on *{env}*; {bk.who(asker)} was told.")


async def _announce(desk: Desk, who: Who, text: str) -> None:
    """Tell the deploy channel, unless the press was there (its reply is public already)."""
    channel = desk.yard.settings.slack_channel
    if channel and channel != who.channel_id:
        await _tell(desk, channel, text)


async def _tell(desk: Desk, to: str, text: str) -> None:
    """Best effort: the change is made and audited whether or not Slack takes the message."""
    if desk.tell is None:
        return
    try:
        await desk.tell(to, text)
    except Exception:
        log.warning("could not tell %s about a lock", to, exc_info=True)


def _button(action_id: str) -> Button:
    """``press_lock`` for one action id, in the shape ``BUTTONS`` holds (desk, who, value)."""

    async def pressed(desk: Desk, who: Who, value: str) -> Reply:
        return await press_lock(desk, who, action_id, value)

    return pressed


for _action in lb.ACTIONS:
    BUTTONS[_action] = _button(_action)
