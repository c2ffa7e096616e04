"""The API's view of the running service (``bot.backend.Backend``) plus what only the API
needs: bearer-token authentication with a short cache, Idempotency-Key storage, problems for
refused commands."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, cast

from aiohttp import web

from bot.api.problems import REFUSAL_STATUS, Problem
from bot.api.routing import Call, Gateway, kept, stored
from bot.backend import Backend, now
from bot.bootstrap import Shipyard
from core.access import Principal
from core.commands import Command
from core.engine import Decision
from core.ports import AuditEntry, Tx
from core.runtime.service import Then
from storage.directory import token_hash
from storage.idempotency import Claim, ClaimLost, IdempotencyStore, settle
from storage.store import SqlTx

#: how long an authenticated token is trusted without asking the database again (a revoked
#: token stops working within this time)
AUTH_CACHE_S = 5.0
#: set in tests only: a command under an Idempotency-Key waits this many seconds before it is
#: handed to the engine (a request held in flight, for a crash to hit)
HOLD_KEYED_COMMAND = "SHIPYARD_TEST_HOLD_KEYED_COMMAND"
#: set in tests only: the process exits with ``CRASH_EXIT_CODE`` right after a command under
#: an Idempotency-Key committed, before it answers
CRASH_AFTER_KEYED_COMMAND = "SHIPYARD_TEST_CRASH_AFTER_KEYED_COMMAND"
CRASH_EXIT_CODE = 87


class ApiGateway(Backend, Gateway):
    """The REST API's backend: problems for refusals, authentication with a short cache."""

    def bind(self, shipyard: Shipyard) -> None:
        super().bind(shipyard)
        settings = shipyard.settings
        lease = timedelta(seconds=settings.idempotency_lease_seconds)
        self.keys = IdempotencyStore(shipyard.store, timedelta(hours=settings.idempotency_hours), lease)
        self.renew_key_every = lease.total_seconds() / 3
        self._auth: dict[str, tuple[float, Principal | None]] = {}

    async def start(self) -> None:
        token = self.shipyard.settings.admin_token
        if token is not None:
            await self.write(self.directory.ensure_admin_token, token.get_secret_value(), now())

    async def command(self, call: Call, command: Command, then: Then | None = None) -> Decision:
        """Hand ``command`` to the engine; a refusal becomes the matching problem."""
        call.audited = True
        if call.key_holder is not None and (hold := os.environ.get(HOLD_KEYED_COMMAND)):
            await asyncio.sleep(float(hold))
        try:
            decision = await self.handle(command, then)
        except BaseException as exc:
            call.settled = False  # what an attempt that rolled back stored is gone with it
            if isinstance(exc, ClaimLost):  # another request took the key over and does the work
                raise Problem(
                    409, "a request with this Idempotency-Key is still being processed; retry shortly"
                ) from None
            raise
        if call.key_holder is not None and os.environ.get(CRASH_AFTER_KEYED_COMMAND):
            os._exit(CRASH_EXIT_CODE)
        if not decision.accepted:
            raise Problem(REFUSAL_STATUS.get(decision.refusal, 409), decision.reason)
        return decision

    async def respond(
        self, call: Call, command: Command, answer: Callable[[Decision], web.Response]
    ) -> web.Response:
        """``command``'s answer: ``answer`` of an accepted decision, a problem for a refusal.
        Under an Idempotency-Key the answer is stored in the command's own transaction, so a
        crash cannot separate the work from the answer a retry gets."""
        then = self._settle(call, answer) if call.key_holder is not None else None
        return answer(await self.command(call, command, then))

    def _settle(self, call: Call, answer: Callable[[Decision], web.Response]) -> Then:
        caller, key, holder = call.principal.name, call.idempotency_key or "", call.key_holder or ""

        def then(tx: Tx, decision: Decision) -> None:  # on a database thread, in the transaction
            call.settled = False  # (run again for each attempt; the one that commits counts)
            if decision.accepted:
                response = answer(decision)
            else:
                status = REFUSAL_STATUS.get(decision.refusal, 409)
                response = Problem(status, decision.reason).response(call.request.path)
            if kept(response.status):
                settle(cast(SqlTx, tx).conn, caller, key, holder, response.status, stored(response))
                call.settled = True

        return then

    # -- Gateway ----------------------------------------------------------------------------
    async def authenticate(self, token: str) -> Principal | None:
        if not token.isascii():  # (ours are; other bytes arrive as surrogates, which cannot be hashed)
            return None
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

    async def renew_key(self, caller: str, key: str, holder: str) -> bool:
        return await self.write(self.keys.renew, caller, key, holder, now())

    async def finish_key(
        self, caller: str, key: str, holder: str, status: int, response: dict[str, Any]
    ) -> None:
        await self.write(self.keys.finish, caller, key, holder, status, response)

    async def release_key(self, caller: str, key: str, holder: str) -> None:
        await self.write(self.keys.release, caller, key, holder)

    async def audit(self, entry: AuditEntry) -> None:
        await self.write(self.shipyard.store.append_audit, entry)

    async def canonical(self, params: dict[str, str]) -> dict[str, str]:
        """A run named by its ref (``web#12``) or an id prefix is named by its id, and its gate,
        named by its stage, by the gate's id. Names that find nothing stay as they were (the
        handler refuses them)."""
        ref = params.get("run_id")
        if ref is None:
            return params
        state = await self.read(self.reads.run, ref, quick=True)
        if state is None:
            return params
        named = {**params, "run_id": state.run.id}
        gate = state.find_gate(params["gate_id"]) if "gate_id" in params else None
        if gate is not None:
            named["gate_id"] = gate.id
        return named


def gw(call: Call) -> ApiGateway:
    return cast(ApiGateway, call.gateway)
