"""Environment locks: take an environment out of service for a while, with a reason
(``core.locks``). A locked environment accepts no deployments; whoever tries, or tries to lock
it too, is told who holds it, since when, why and until when.

Deployers and admins lock; the holder or an admin unlocks (anyone who may deploy acknowledges a
rollback lock); only the holder extends; anyone else may ask the holder to hand it over, which
Slack puts to them with buttons. Every change and every refusal is audited by the lock locks."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, Field

from bot.api.common import known_environment, reply
from bot.api.gateway import gw
from bot.api.problems import Problem
from bot.api.routing import PREFIX, Call
from bot.api.schemas import Strict
from bot.api.spec import API
from bot.backend import now
from core import locks as lock_rules
from core.access import Action, Role
from core.errors import InvalidInput
from core.locks import EnvironmentLocked, Lock
from storage.locks import LockStore

#: what ``core.locks.lock_duration`` accepts, as a documented JSON Schema pattern (the handler
#: applies the rule itself, so a refusal explains itself instead of quoting a regular expression)
DURATION_PATTERN = r"^([0-9]+[smhd])+$"
HOW_LONG = "how long: 30m, 2h, 1h30m, 1d (at least 1m, at most 365d)"


class LockIn(Strict):
    reason: str = Field(
        min_length=1,
        max_length=lock_rules.REASON_MAX,
        pattern=r"[^\x00-\x20\x7f]",
        description="why; shown to everyone who is refused",
    )
    duration: str | None = Field(
        None,
        max_length=20,
        json_schema_extra={"pattern": DURATION_PATTERN},
        description=HOW_LONG + "; null: until it is unlocked",
    )


class ExtendIn(Strict):
    duration: str = Field(
        max_length=20, json_schema_extra={"pattern": DURATION_PATTERN}, description=HOW_LONG
    )


class LockOut(BaseModel):
    environment: str
    holder: str = Field(description="a token name or a Slack user id")
    reason: str
    kind: Literal["manual", "rollback"] = Field(
        description="rollback: taken after a rollback, held until someone acknowledges it"
    )
    since: datetime
    expires_at: datetime | None = Field(description="null: until it is unlocked (or acknowledged)")
    handover_requested_by: str | None
    description: str = Field(description="who holds it, since when, why and until when, in words")

    @classmethod
    def of(cls, lock: Lock, at: datetime) -> LockOut:
        return cls(
            environment=lock.environment,
            holder=lock.holder,
            reason=lock.reason,
            kind=lock.kind,
            since=lock.since,
            expires_at=lock.expires_at,
            handover_requested_by=lock.handover_requested_by,
            description=lock_rules.describe(lock, at),
        )


class LockList(BaseModel):
    items: list[LockOut]


def _locks(call: Call) -> LockStore:
    return LockStore(gw(call).shipyard.store)


def _location(env: str) -> dict[str, str]:
    return {"Location": f"{PREFIX}/environments/{env}/lock"}


def _locked(exc: EnvironmentLocked) -> Problem:
    """409 with the holder's lock in words and as fields."""
    held = exc.lock
    return Problem(
        409,
        exc.message,
        holder=held.holder,
        since=held.since.isoformat(),
        expires_at=held.expires_at.isoformat() if held.expires_at else None,
        kind=held.kind,
    )


def _seconds(text: str) -> float:
    seconds = lock_rules.lock_duration(text)
    if seconds is None:
        raise InvalidInput(f"say how long to extend the lock: {HOW_LONG}")
    return seconds


@API.op(
    "GET",
    "/locks",
    summary="Every environment lock that holds now",
    action=Action.READ,
    tag="locks",
    responses={200: ("the locks, by environment", LockList)},
)
async def list_locks(call: Call) -> web.Response:
    at = now()
    found = await gw(call).read(_locks(call).all, at)
    return reply(LockList(items=[LockOut.of(lock, at) for lock in found]))


@API.op(
    "GET",
    "/environments/{env_id}/lock",
    summary="An environment's lock",
    action=Action.READ,
    tag="locks",
    responses={200: ("the lock; 404 when the environment is not locked", LockOut)},
)
async def get_lock(call: Call) -> web.Response:
    env, at = call.params["env_id"], now()
    found = await gw(call).read(_locks(call).current, env, at)
    if found is None:
        raise lock_rules.not_locked(env)
    return reply(LockOut.of(found, at))


@API.op(
    "POST",
    "/environments/{env_id}/lock",
    summary="Lock an environment",
    action=Action.CONTROL,
    tag="locks",
    body=LockIn,
    responses={
        201: ("locked", LockOut),
        200: ("you held the lock already: its reason and expiry are replaced", LockOut),
    },
    headers={201: {"Location": "/api/v1/environments/{env_id}/lock"}},
)
async def lock_environment(call: Call) -> web.Response:
    """Deployers and admins. No deployment starts in a locked environment until the holder or an
    admin unlocks it, or its `duration` runs out (the holder is reminded in Slack first). When
    someone else holds it: `409` saying who, since when, why and until when (also as `holder`,
    `since`, `expires_at`, `kind`)."""
    body: LockIn = call.body
    env = call.params["env_id"]
    if body.duration is not None and not body.duration.strip():
        raise Problem(422, f"duration is empty: {HOW_LONG}, or null for a lock without expiry")
    seconds = lock_rules.lock_duration(body.duration)
    await known_environment(call, env)
    locks, at = _locks(call), now()
    call.audited = True  # the locks audits the outcome, accepted or refused
    try:
        lock = await gw(call).write(
            lambda: locks.acquire(env, call.principal.name, body.reason, seconds, at, channel="rest")
        )
    except EnvironmentLocked as exc:
        raise _locked(exc) from None
    created = lock.since == at
    return reply(LockOut.of(lock, at), 201 if created else 200, _location(env) if created else None)


@API.op(
    "DELETE",
    "/environments/{env_id}/lock",
    summary="Unlock an environment (or acknowledge a rollback)",
    action=Action.CONTROL,
    tag="locks",
    responses={200: ("unlocked; the lock as it was", LockOut)},
)
async def unlock_environment(call: Call) -> web.Response:
    """The holder or an admin; anyone else is refused with `403` naming the holder. A rollback
    lock is acknowledged by any deployer or admin."""
    env, locks, at = call.params["env_id"], _locks(call), now()
    admin = Role.ADMIN in call.principal.roles
    call.audited = True
    lock = await gw(call).write(
        lambda: locks.release(env, call.principal.name, at, admin=admin, deployer=True, channel="rest")
    )
    return reply(LockOut.of(lock, at))


@API.op(
    "POST",
    "/environments/{env_id}/lock/extend",
    summary="Extend your lock",
    action=Action.CONTROL,
    tag="locks",
    body=ExtendIn,
    responses={200: ("the lock with its new expiry", LockOut)},
)
async def extend_lock(call: Call) -> web.Response:
    """The holder only; the expiry moves `duration` later (from now, if it is sooner)."""
    body: ExtendIn = call.body
    env, locks, at = call.params["env_id"], _locks(call), now()
    seconds = _seconds(body.duration)
    call.audited = True
    lock = await gw(call).write(lambda: locks.extend(env, call.principal.name, seconds, at, channel="rest"))
    return reply(LockOut.of(lock, at))


@API.op(
    "POST",
    "/environments/{env_id}/lock/handover",
    summary="Ask the holder to hand the lock over to you",
    action=Action.CONTROL,
    tag="locks",
    responses={
        202: ("asked; the holder is asked in Slack, with buttons to hand it over or keep it", LockOut)
    },
)
async def request_lock_handover(call: Call) -> web.Response:
    """Anyone who may lock, except the holder. Asking again is harmless (the holder is asked once)."""
    env, locks, at = call.params["env_id"], _locks(call), now()
    call.audited = True
    lock = await gw(call).write(lambda: locks.request_handover(env, call.principal.name, at, channel="rest"))
    return reply(LockOut.of(lock, at), 202)
