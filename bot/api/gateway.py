"""The API's view of the running service: authentication (with a short cache), reads on their
own thread pool, writes and commands through the orchestrator's database thread."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

from bot.api.problems import REFUSAL_STATUS, Problem
from bot.api.routing import Call, Gateway
from bot.bootstrap import Shipyard
from core.access import Principal
from core.commands import Command
from core.engine import Decision
from core.ports import AuditEntry
from storage.directory import Directory, token_hash
from storage.idempotency import Claim, IdempotencyStore
from storage.reads import Reads

T = TypeVar("T")
#: how long an authenticated token is trusted without asking the database again (a revoked
#: token stops working within this time)
AUTH_CACHE_S = 5.0


class ApiGateway(Gateway):
    """Bound to the running ``Shipyard`` when the application starts (``bind``)."""

    yard: Shipyard

    def bind(self, yard: Shipyard) -> None:
        self.yard = yard
        self.reads = Reads(yard.store)
        self.directory = Directory(yard.store)
        self.keys = IdempotencyStore(yard.store, timedelta(hours=yard.settings.idempotency_hours))
        workers = 4 if yard.store.sqlite else yard.store.max_workers
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shipyard-api-read")
        self._auth: dict[str, tuple[float, Principal | None]] = {}

    async def start(self) -> None:
        token = self.yard.settings.admin_token
        if token is not None:
            await self.write(self.directory.ensure_admin_token, token.get_secret_value(), now())

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def read(self, fn: Callable[..., T], *args: Any, quick: bool = False) -> T:
        """Run a read on the read pool. A ``quick`` one (a lookup by key, well under a
        millisecond on SQLite, which never waits for a writer in WAL mode) runs right here:
        handing it to a thread would cost more than it takes."""
        if quick and self.yard.store.sqlite:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.yard.orchestrator.db(fn, *args)

    async def command(self, call: Call, command: Command) -> Decision:
        """Hand ``command`` to the engine; a refusal becomes the matching problem."""
        call.audited = True
        decision = await self.yard.orchestrator.handle(command)
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
        await self.write(self.yard.store.append_audit, entry)


def gw(call: Call) -> ApiGateway:
    return cast(ApiGateway, call.gateway)


def now() -> datetime:
    return datetime.now(UTC)
