"""The lock keeper: every few seconds it expires the locks whose time ran out (telling the deploy
channel), reminds holders ``lock_reminder`` before their lock expires (with Extend 1h and
Release buttons) and puts handover requests to holders (Hand over / Keep it).

Each of those is claimed in the database before it is said (``storage.locks``), so of several
replicas exactly one expires, reminds or asks about each lock, and a restart repeats nothing.
The claim comes first: if Slack fails right then, that one message is lost, never doubled.
``tick(now)`` does one round at a given time, for tests."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from aiohttp import web

from bot.backend import Backend, now
from bot.chat import block_kit, lock_blocks
from bot.config import Settings
from core.errors import DatabaseUnreachable
from core.locks import Lock
from storage.locks import LockStore

if TYPE_CHECKING:
    from slack_sdk.web.async_client import AsyncWebClient

log = logging.getLogger(__name__)
#: how often the keeper looks (an expiry is told at most this late)
EVERY_S = 5.0


@dataclass(frozen=True, slots=True)
class Round:
    """What one tick did."""

    expired: list[Lock] = field(default_factory=list)
    reminded: list[Lock] = field(default_factory=list)
    asked: list[Lock] = field(default_factory=list)


class LockKeeper:
    def __init__(
        self,
        backend: Backend,
        settings: Settings,
        client: AsyncWebClient | None = None,
        every_s: float = EVERY_S,
    ) -> None:
        self.backend = backend
        self.settings = settings
        if client is None and settings.slack_enabled:
            from bot.slack.bot import make_client  # (Slack is optional: import it only when on)

            client = make_client(settings)
        #: None when Slack is off: locks still expire, nobody is reminded
        self.client = client
        self.every_s = every_s
        self._task: asyncio.Task[None] | None = None

    @property
    def locks(self) -> LockStore:
        return LockStore(self.backend.shipyard.store)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="shipyard-lock-keeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except DatabaseUnreachable:  # (said once by the engine's health): look again next time
                log.debug("lock keeper waits for the database")
            except Exception:  # Slack is away: look again next time
                log.exception("lock keeper round failed; retrying")
            await asyncio.sleep(self.every_s)

    async def tick(self, at: datetime | None = None) -> Round:
        """Expire, remind and ask what is due at ``at`` (now by default)."""
        at = at or now()
        locks = self.locks
        done = Round(expired=await self.backend.write(locks.expire_due, at))
        if self.client is not None:
            done.reminded.extend(await self._remind(locks, at))
            done.asked.extend(await self.backend.write(locks.due_handovers, at))
        channel = self.settings.slack_channel
        for lock in done.expired:
            if channel:
                await self._post(channel, lock_blocks.expired(lock), [])
        for lock in done.reminded:
            await self._post(self._holder(lock), *lock_blocks.reminder(lock, at))
        for lock in done.asked:
            await self._post(self._holder(lock), *lock_blocks.handover_prompt(lock, at))
        return done

    async def _remind(self, locks: LockStore, at: datetime) -> list[Lock]:
        """Claim the reminders due; each environment reminds its own ``lock_reminder`` ahead."""
        waiting = [
            lock
            for lock in await self.backend.read(locks.all, at)
            if lock.expires_at is not None and lock.reminded_at is None
        ]
        by_lead: dict[float, list[str]] = {}
        for lock in waiting:
            lead = self.settings.environment(lock.environment).lock_reminder
            by_lead.setdefault(lead, []).append(lock.environment)
        claimed: list[Lock] = []
        for lead, environments in by_lead.items():
            claimed += await self.backend.write(locks.due_reminders, at, lead, environments)
        return claimed

    def _holder(self, lock: Lock) -> str | None:
        """Where to reach the holder: a Slack user directly, anyone else in the deploy channel."""
        return lock.holder if lock_blocks.slack_user(lock.holder) else self.settings.slack_channel

    async def _post(self, channel: str | None, text: str, blocks: list[block_kit.Block]) -> None:
        if self.client is None or not channel:
            return
        try:
            await self.client.chat_postMessage(channel=channel, text=text, blocks=blocks or None)
        except Exception:
            log.warning("could not post a lock message to %s", channel, exc_info=True)


KEEPER = web.AppKey("lock_keeper", LockKeeper)
