"""The hourly housekeeping pass: deletes what has outlived its keeping time, so the tables
that grow with use stay bounded (``docs/operations.md`` lists every such table and what bounds
it). Every periodic clean-up lives here, on one APScheduler job.

Each kind goes a batch at a time, each batch its own short transaction, and at most
``MAX_BATCHES`` batches a pass: a backlog (the first pass after a long outage) is worked off
over several passes instead of holding the database in one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bot.backend import Backend, now
from bot.config import Settings
from bot.web.signin import web_sessions
from bot.webhooks.service import Config
from core.errors import DatabaseUnreachable
from storage.analyses import AnalysisStore
from storage.idempotency import IdempotencyStore
from storage.webhooks import WebhookStore

log = logging.getLogger(__name__)
#: how often the pass runs (the first one right at start, so short-lived processes clean too)
EVERY_S = 3600.0
#: how long a stop lets the batch under way finish before it cancels the pass (a batch is one
#: short transaction; cancelling its await would leave it to commit after the stop returned)
STOP_GRACE_S = 5.0
#: rows deleted per transaction
BATCH = 1000
#: transactions per kind and pass: at most ``BATCH * MAX_BATCHES`` rows of a kind go at once
MAX_BATCHES = 50


@dataclass(frozen=True, slots=True)
class Swept:
    """How many rows of each kind one pass deleted."""

    idempotency_keys: int
    webhook_deliveries: int
    health_measurements: int = 0
    web_sign_ins: int = 0


class Housekeeping:
    def __init__(self, backend: Backend, settings: Settings) -> None:
        store = backend.shipyard.store
        self.backend = backend
        self.keys = IdempotencyStore(store, timedelta(hours=settings.idempotency_hours))
        self.deliveries = WebhookStore(store)
        self.delivery_keep = Config.of(settings).keep
        self.analyses = AnalysisStore(store)
        self.measurement_keep = timedelta(days=settings.measurement_keep_days)
        self.web = web_sessions(backend.shipyard)
        self.scheduler: AsyncIOScheduler | None = None
        #: the pass under way, if one is (a stop ends it rather than leave it to be cancelled
        #: when the event loop closes, which APScheduler would log as a failed job)
        self._running: asyncio.Task[Any] | None = None
        #: set by ``stop``: a pass not begun yet never begins, one under way ends after its batch
        self._stopping = False

    async def start(self) -> None:
        self.scheduler = AsyncIOScheduler(timezone="UTC")
        self.scheduler.add_job(
            self._pass, "interval", seconds=EVERY_S, next_run_time=now(), max_instances=1, coalesce=True
        )
        self.scheduler.start()

    async def stop(self) -> None:
        """Once this returns, the pass deletes nothing more: one that APScheduler handed to the
        event loop but that has not begun yet never begins, and one under way ends after the
        batch it is in (cancelled only if that batch outlasts ``STOP_GRACE_S``)."""
        self._stopping = True
        running = self._running
        if running is not None and not running.done():
            await asyncio.wait({running}, timeout=STOP_GRACE_S)
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)  # (it cancels the job's task: so only after it)

    async def sweep(self, at: datetime | None = None) -> Swept:
        """One pass at ``at`` (now by default): what the hourly job runs; tests call it with a time."""
        return await self._sweep(at or now(), lambda: True)

    async def _sweep(self, at: datetime, going: Callable[[], bool]) -> Swept:
        """A pass that stops between batches once ``going`` says so."""

        async def drain(batch: Callable[[], Awaitable[int]]) -> int:
            return await self._drain(batch, going)

        keys = await drain(lambda: self.backend.write(self.keys.purge, at, BATCH))
        before = at - self.delivery_keep
        deliveries = await drain(lambda: self.backend.write(self.deliveries.prune, before, BATCH))
        old = at - self.measurement_keep
        measured = await drain(lambda: self.backend.write(self.analyses.prune_health, old, BATCH))
        signed = await drain(lambda: self.backend.write(self.web.purge, at, BATCH))
        return Swept(
            idempotency_keys=keys,
            webhook_deliveries=deliveries,
            health_measurements=measured,
            web_sign_ins=signed,
        )

    async def _pass(self) -> None:
        if self._stopping:  # (handed to the event loop just before the stop)
            return
        self._running = asyncio.current_task()
        try:
            swept = await self._sweep(now(), lambda: not self._stopping)
        except asyncio.CancelledError:  # (``stop``: the service stops; the next start sweeps)
            log.debug("housekeeping pass stopped with the service")
            return
        except DatabaseUnreachable:  # (said once by the engine's health): the next pass
            log.info("housekeeping pass skipped: the database is unreachable")
            return
        except Exception:
            log.exception("housekeeping pass failed")
            return
        finally:
            self._running = None
        log.info("housekeeping: %s", swept)

    @staticmethod
    async def _drain(batch: Callable[[], Awaitable[int]], going: Callable[[], bool]) -> int:
        """Run ``batch`` until it deletes fewer than ``BATCH`` rows, at most ``MAX_BATCHES`` times,
        while ``going``."""
        gone = 0
        for _ in range(MAX_BATCHES):
            if not going():
                break
            deleted = await batch()
            gone += deleted
            if deleted < BATCH:
                break
        return gone


HOUSEKEEPING = web.AppKey("housekeeping", Housekeeping)
