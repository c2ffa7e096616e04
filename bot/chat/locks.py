"""``/deploy lock production "incident 4711" [for 2h]``, ``/deploy unlock production``,
``/deploy locks``, and the lock buttons (``lock_blocks``). Registered on import (``bot.chat``):
the verbs in ``VERBS`` and the buttons in ``BUTTONS``, so Slack and the console answer them
through the same ``verbs.press``.

Locking and unlocking answer in the channel, so everyone sees the environment change hands;
refusals answer the person alone, saying who holds the lock, since when, why and until when."""

from __future__ import annotations

import logging

from bot.backend import now
from bot.chat import block_kit, lock_blocks
from bot.chat.parse import Line
from bot.chat.verbs import BUTTONS, VERBS, Button, ChatBackend, Refusal, Reply, Tell, Who, verb
from core.access import Action, Role
from core.errors import ShipyardError
from core.locks import EnvironmentLocked, Lock, NotLockHolder, split_for
from storage.locks import LockStore

log = logging.getLogger(__name__)


def tell_with(backend: ChatBackend, tell: Tell) -> None:
    """Lock buttons pressed on ``backend`` tell the new holder, the asker and the deploy channel
    through ``tell``; the same as setting ``backend.tell``."""
    backend.tell = tell


def _locks(backend: ChatBackend) -> LockStore:
    return LockStore(backend.shipyard.store)


@verb(
    "lock",
    'lock <environment> "<reason>" [for 2h]',
    "lock an environment: no deployments until it is unlocked or the time runs out",
    Action.CONTROL,
)
async def lock(backend: ChatBackend, who: Who, line: Line) -> Reply:
    words, seconds = split_for(line.words[1:])
    reason = " ".join([*words, *(f"{k}={v}" for k, v in line.params.items())]).strip()
    if not line.words or not reason:
        raise Refusal(f"Say which environment and why: `/deploy {VERBS['lock'].usage}`")
    env = line.words[0]
    if await backend.read(_locks(backend).current, env, now()) is None:  # (a held one is refused by name)
        await backend.require_environment(env)
    at = now()
    store = _locks(backend)
    try:
        locked = await backend.write(
            lambda: store.acquire(env, who.user, reason, seconds, at, channel=who.channel)
        )
    except EnvironmentLocked as exc:
        return Reply(*lock_blocks.refused(exc.lock, at))
    again = " (reason and expiry updated)" if locked.since != at else ""
    return Reply(
        f":lock: {lock_blocks.told(locked, at)}{again}. Unlock it with `/deploy unlock {env}`.",
        public=True,
    )


@verb(
    "unlock",
    "unlock <environment>",
    "unlock an environment you locked (admins: any)",
    Action.CONTROL,
    words=1,
)
async def unlock(backend: ChatBackend, who: Who, line: Line) -> Reply:
    if len(line.words) != 1:
        raise Refusal(f"Usage: `/deploy {VERBS['unlock'].usage}`")
    env = line.words[0]
    if await backend.read(_locks(backend).current, env, now()) is None:  # (a typo: not "not locked")
        await backend.require_environment(env)
    return await _release(backend, who, env)


async def _release(backend: ChatBackend, who: Who, env: str) -> Reply:
    principal = await backend.principal(who.user)
    admin = Role.ADMIN in principal.roles
    deployer = principal.may(Action.CONTROL)
    store, at = _locks(backend), now()
    try:
        gone = await backend.write(
            lambda: store.release(env, who.user, at, admin=admin, deployer=deployer, channel=who.channel)
        )
    except NotLockHolder as exc:
        raise Refusal(exc.told(block_kit.who)) from None
    return Reply(released(gone, who.user), public=True)


def released(lock: Lock, by: str) -> str:
    if lock.kind == "rollback":
        return (
            f":white_check_mark: {block_kit.who(by)} acknowledged the rollback of *{lock.environment}*; "
            "it takes deployments again."
        )
    whose = "" if lock.holder == by else f" (locked by {block_kit.who(lock.holder)})"
    return f":unlock: {block_kit.who(by)} unlocked *{lock.environment}*{whose}: {lock.reason}."


@verb("locks", "locks", "the locked environments: who holds each, why and until when", words=0)
async def locks(backend: ChatBackend, who: Who, line: Line) -> Reply:
    at = now()
    found = await backend.read(_locks(backend).all, at)
    if not found:
        return Reply(f"No environment is locked. Lock one: `/deploy {VERBS['lock'].usage}`")
    return Reply("\n".join(f":lock: {lock_blocks.told(lock, at)}" for lock in found))


# -- buttons -------------------------------------------------------------------------------------
async def press_lock(backend: ChatBackend, who: Who, action_id: str, value: str) -> Reply:
    """A lock button: Extend 1h and Release on a reminder, Hand over and Keep it on a handover
    question, Ask on a refusal, Acknowledge on a rollback lock. A button made for a lock that
    has since gone or changed hands answers with the environment as it is now."""
    ref = lock_blocks.read_value(value)
    if ref is None or action_id not in lock_blocks.ACTIONS:
        return Reply(":warning: That button is not one of mine.")
    env, at, store = ref["env"], now(), _locks(backend)
    try:
        current = await backend.read(store.current, env, at)
        if action_id != lock_blocks.ASK and (
            current is None or current.since.isoformat() != ref.get("since")
        ):
            state = (
                "is not locked any more" if current is None else f"changed: {lock_blocks.told(current, at)}"
            )
            return Reply(f"That button is for an earlier lock; {env} {state}.")
        return await _pressed(backend, who, action_id, env, ref)
    except (NotLockHolder, EnvironmentLocked) as exc:
        return Reply(f":warning: {exc.told(block_kit.who)}")
    except Refusal as exc:
        return Reply(f":warning: {exc}")
    except ShipyardError as exc:
        return Reply(f":warning: {exc.message}")


async def _pressed(backend: ChatBackend, who: Who, action_id: str, env: str, ref: dict[str, str]) -> Reply:
    store, at = _locks(backend), now()
    if action_id in (lock_blocks.RELEASE, lock_blocks.ACKNOWLEDGE):
        reply = await _release(backend, who, env)
        await _announce(backend, who, reply.text)
        return reply
    if action_id == lock_blocks.EXTEND:
        longer = await backend.write(
            lambda: store.extend(env, who.user, lock_blocks.EXTEND_S, at, channel=who.channel)
        )
        return Reply(f":lock: {lock_blocks.told(longer, at)}.")
    if action_id == lock_blocks.ASK:
        if not (await backend.principal(who.user)).may(Action.CONTROL):
            return Reply(":warning: Asking for a lock needs the deployer role, like locking.")
        asked = await backend.write(lambda: store.request_handover(env, who.user, at, channel=who.channel))
        return Reply(
            f"Asked {block_kit.who(asked.holder)} to hand over the lock on *{env}*; their answer comes here."
        )
    if action_id == lock_blocks.HAND_OVER:
        to = ref.get("to", "")
        moved = await backend.write(lambda: store.hand_over(env, who.user, to, at, channel=who.channel))
        if lock_blocks.slack_user(to):
            await _tell(
                backend,
                to,
                f":lock: {block_kit.who(who.user)} handed you the lock: {lock_blocks.told(moved, at)}.",
            )
        await _announce(
            backend,
            who,
            f":lock: {block_kit.who(who.user)} handed the lock on *{env}* to {block_kit.who(to)}.",
        )
        return Reply(f"You handed the lock on *{env}* to {block_kit.who(to)}.")
    kept, asker = await backend.write(lambda: store.keep(env, who.user, at, channel=who.channel))
    if not lock_blocks.slack_user(asker):  # asked over the API: the lock shows the answer there
        return Reply(f"You keep the lock on *{env}*.")
    await _tell(
        backend,
        asker,
        f":lock: {block_kit.who(who.user)} keeps the lock for now: {lock_blocks.told(kept, at)}.",
    )
    return Reply(f"You keep the lock on *{env}*; {block_kit.who(asker)} was told.")


async def _announce(backend: ChatBackend, who: Who, text: str) -> None:
    """Tell the deploy channel, unless the press was there (its reply is public already)."""
    channel = backend.shipyard.settings.slack_channel
    if channel and channel != who.slack_channel:
        await _tell(backend, channel, text)


async def _tell(backend: ChatBackend, to: str, text: str) -> None:
    """Best effort: the change is made and audited whether or not Slack takes the message."""
    if backend.tell is None:
        return
    try:
        await backend.tell(to, text)
    except Exception:
        log.warning("could not tell %s about a lock", to, exc_info=True)


def _button(action_id: str) -> Button:
    """``press_lock`` for one action id, in the shape ``BUTTONS`` holds (backend, who, value)."""

    async def pressed(backend: ChatBackend, who: Who, value: str) -> Reply:
        return await press_lock(backend, who, action_id, value)

    return pressed


for _action in lock_blocks.ACTIONS:
    BUTTONS[_action] = _button(_action)
