"""Environment secrets (``core.secrets``, docs/secrets.md): admins set, list and delete them.

Values are write-only: they go in with ``PUT`` and nothing ever answers with them, not even an
error (a refused value is described, never quoted). Every change is audited with the secret's
environment and name."""

from __future__ import annotations

import json
import re
from datetime import datetime

from aiohttp import web
from pydantic import BaseModel, Field

from bot.api.common import reply
from bot.api.gateway import gw
from bot.api.problems import Problem
from bot.api.routing import PREFIX, Call
from bot.api.schemas import Strict
from bot.api.spec import API
from bot.backend import now
from core.access import Action
from core.definition import NAME
from core.secrets import MAX_LENGTH, MIN_LENGTH
from core.secrets import NAME as SECRET_NAME
from storage.secrets import SecretInfo, SecretStore


class SecretIn(Strict):
    value: str = Field(
        min_length=MIN_LENGTH,
        max_length=MAX_LENGTH,
        # the document says what ``core.secrets`` checks (and says, in words, when it refuses):
        # at least MIN_LENGTH characters between the first and last that are not blank, no NUL
        json_schema_extra={"pattern": rf"^\s*[^\s\x00][^\x00]{{{MIN_LENGTH - 2},}}[^\s\x00]\s*$"},
        description="the value, given to the jobs of the stages that deploy to this environment; "
        "never shown again",
    )


class SecretOut(BaseModel):
    environment: str
    name: str
    updated_at: datetime
    updated_by: str = Field(description="who set it last")

    @classmethod
    def of(cls, info: SecretInfo) -> SecretOut:
        return cls(
            environment=info.environment,
            name=info.name,
            updated_at=info.updated_at,
            updated_by=info.updated_by,
        )


class SecretList(BaseModel):
    items: list[SecretOut] = Field(description="names only: values are never returned")


def _secrets(call: Call) -> SecretStore:
    shipyard = gw(call).shipyard
    return SecretStore(shipyard.store, shipyard.secret_box)


def _where(call: Call) -> tuple[str, str]:
    """The environment and secret name of the path, each checked."""
    env, name = call.params["env_id"], call.params.get("secret", "")
    if not re.match(NAME, env):  # (as every environment route: a name that cannot be is not found)
        raise Problem(404, f"no environment {env!r}: names are lower-case letters, digits and '-'")
    if name and not SECRET_NAME.match(name):
        raise Problem(422, f"secret name {name!r}: use A-Z, 0-9 and _, not starting with a digit")
    return env, name


async def _as_sent(call: Call, name: str, value: str) -> None:
    """422 unless ``value`` is the one sent: the API reads a NUL or an unpaired surrogate as
    U+FFFD (text a database can store), which would silently store another secret."""
    sent = json.loads(await call.request.read()).get("value")
    if sent != value:
        raise Problem(422, f"secret {name}: the value contains a NUL character or an unpaired surrogate")


@API.op(
    "GET",
    "/environments/{env_id}/secrets",
    summary="An environment's secrets, by name (never their values)",
    action=Action.MANAGE,
    tag="secrets",
    responses={200: ("the secrets' names, who set each and when", SecretList)},
)
async def list_secrets(call: Call) -> web.Response:
    env, _ = _where(call)
    found = await gw(call).read(_secrets(call).names, env)
    return reply(SecretList(items=[SecretOut.of(info) for info in found]))


@API.op(
    "PUT",
    "/environments/{env_id}/secrets/{secret}",
    summary="Set a secret",
    action=Action.MANAGE,
    tag="secrets",
    body=SecretIn,
    responses={
        201: ("created; the answer names it, without the value", SecretOut),
        200: ("replaced; the answer names it, without the value", SecretOut),
    },
    headers={201: {"Location": "/api/v1/environments/{env_id}/secrets"}},
)
async def set_secret(call: Call) -> web.Response:
    """Admins. The value is stored encrypted and given, as the environment variable `name`, to
    the jobs of stages that deploy to this environment once their protection rules passed; it
    is masked (`***`) in their logs and outputs, with its base64 forms. `409` when the server
    has no `SHIPYARD_SECRET_KEY`."""
    body: SecretIn = call.body
    env, name = _where(call)
    await _as_sent(call, name, body.value)
    store, at = _secrets(call), now()
    call.audited = True  # the store audits the change (the name, never the value)
    created = await gw(call).write(store.set, env, name, body.value, call.principal.name, at, "rest")
    info = SecretInfo(env, name, at, call.principal.name)
    location = {"Location": f"{PREFIX}/environments/{env}/secrets"} if created else None
    return reply(SecretOut.of(info), 201 if created else 200, location)


@API.op(
    "DELETE",
    "/environments/{env_id}/secrets/{secret}",
    summary="Delete a secret",
    action=Action.MANAGE,
    tag="secrets",
    responses={200: ("deleted; jobs claimed from now on no longer get it", SecretOut)},
)
async def delete_secret(call: Call) -> web.Response:
    env, name = _where(call)
    store = _secrets(call)
    call.audited = True
    info = await gw(call).write(store.delete, env, name, call.principal.name, now(), "rest")
    return reply(SecretOut.of(info))
