"""The API's view of the running service (``bot.backend.Backend``) plus what only the API
needs: bearer-token authentication with a short cache, Idempotency-Key storage, problems for
refused commands."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any, cast

from bot.api.problems import REFUSAL_STATUS, Problem
from bot.api.routing import Call, Gateway
from bot.backend import Backend, now
from bot.bootstrap import Shipyard
from core.access import Principal
from core.commands import Command
from core.engine import Decision
from core.ports import AuditEntry
from storage.directory import token_hash
from storage.idempotency import Claim, IdempotencyStore

#: how long an authenticated token is trusted without asking the database again (a revoked
#: token stops working within this time)
AUTH_CACHE_S = 5.0


class ApiGateway(Backend, Gateway):
    """The REST API's backend: problems for refusals, authentication with a short cache."""

    def bind(self, shipyard: Shipyard) -> None:
        super().bind(shipyard)
        self.keys = IdempotencyStore(shipyard.store, timedelta(hours=shipyard.settings.idempotency_hours))
        self._auth: dict[str, tuple[float, Principal | None]] = {}

    async def start(self) -> None:
        token = self.shipyard.settings.admin_token
        if token is not None:
            await self.write(self.directory.ensure_admin_token, token.get_secret_value(), now())

    async def command(self, call: Call, command: Command) -> Decision:
        """Hand ``command`` to the engine; a refusal becomes the matching problem."""
        call.audited = True
        decision = await self.decide(command)
        if not decision.accepted:
            raise Problem(REFUSAL_STATUS.get(decision.refusal, 409), decision.reason)
        return decision

    # -- Gateway ----------------------------------------------------------------------------
    async def authenticate(self, token: str) -> Principal | None:
        digest = token_hash(token)
        hit = self._auth.get(digest)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        principal = await self.read(self.directory.authenticate, token, now(), quick=True)
        if len(self._auth) > 10_000:
            self._auth.clear()
        self._auth[digest] = (time.monotonic() + AUTH_CACHE_S, principal)
        return principal

    async def claim_key(self, caller: str, key: str, fingerprint: str) -> Claim:
        return await self.write(self.keys.claim, caller, key, fingerprint, now())

    async def finish_key(self, caller: str, key: str, status: int, response: dict[str, Any]) -> None:
        await self.write(self.keys.finish, caller, key, status, response)

    async def release_key(self, caller: str, key: str) -> None:
        await self.write(self.keys.release, caller, key)

    async def audit(self, entry: AuditEntry) -> None:
        await self.write(self.shipyard.store.append_audit, entry)


def gw(call: Call) -> ApiGateway:
    return cast(ApiGateway, call.gateway)
