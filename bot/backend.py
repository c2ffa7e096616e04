"""What every face of Shipyard (REST, Slack, console) uses to reach the running service: reads
on their own thread pool (or inline, for key lookups on SQLite), writes and engine commands
through the orchestrator's database thread, and the directory of principals."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from bot.bootstrap import Shipyard
from core.commands import Command
from core.engine import Decision
from core.runtime.service import Then
from core.zombies import Stuck, diagnose
from storage.analyses import AnalysisStore
from storage.directory import Directory
from storage.reads import Reads

T = TypeVar("T")
log = logging.getLogger(__name__)


class Backend:
    """Bound to the running ``Shipyard`` when the application starts (``bind``)."""

    shipyard: Shipyard
    reads: Reads
    directory: Directory
    analyses: AnalysisStore
    pool: ThreadPoolExecutor
    #: wraps each command a person gave in a span of its run's trace (``bot.otel``), when
    #: traces are exported
    traced: Callable[[Command], AbstractContextManager[object]] | None = None
    #: told when this process adds a schedule (the clock, resting until the next fire time
    #: it knows, looks again)
    schedule_added: Callable[[], None] = staticmethod(lambda: None)

    def bind(self, shipyard: Shipyard) -> None:
        self.shipyard = shipyard
        self.reads = Reads(shipyard.store)
        self.directory = Directory(shipyard.store)
        self.analyses = AnalysisStore(shipyard.store)
        workers = 4 if shipyard.store.sqlite else shipyard.store.max_workers
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shipyard-read")

    async def close(self, wait_s: float = 5.0) -> None:
        """Take no more reads and give those in flight up to ``wait_s`` to end. The store is
        disposed next: a read still holding a pooled connection then leaves it to the garbage
        collector (psycopg warns of a connection deleted while open)."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        try:
            await asyncio.wait_for(asyncio.to_thread(self.pool.shutdown, True), wait_s)
        except TimeoutError:
            log.warning("a database read was still running %.0f s into the shutdown; not waiting", wait_s)

    async def read(self, fn: Callable[..., T], *args: Any, quick: bool = False) -> T:
        """Run a read on the read pool. A ``quick`` one (a lookup by key, well under a
        millisecond on SQLite, which never waits for a writer in WAL mode) runs right here:
        handing it to a thread would cost more than it takes. Failing to reach the database
        raises ``DatabaseUnreachable`` and tells the orchestrator's ``health``; a read that got
        through does not end an outage, though: SQLite serves readers while another process
        holds its write lock, so only a write (the engine's timers try one every poll) does."""
        try:
            if quick and self.shipyard.store.sqlite:
                return fn(*args)
            return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        except Exception as exc:
            if (down := self.shipyard.orchestrator.health.failed(exc)) is None:
                raise
            raise down from exc

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.shipyard.orchestrator.db(fn, *args)

    async def decide(self, command: Command) -> Decision:
        return await self.handle(command)

    async def handle(self, command: Command, then: Then | None = None) -> Decision:
        """Hand ``command`` to the engine (in a span when traces are exported)."""
        if self.traced is None:
            return await self.shipyard.orchestrator.handle(command, then)
        with self.traced(command):
            return await self.shipyard.orchestrator.handle(command, then)

    async def stuck(self, limit: int = 50) -> list[Stuck]:
        """Zombie runs, oldest change first (``core.zombies``)."""
        at = now()
        after_s = self.shipyard.settings.stuck_after_seconds
        found = await self.read(self.reads.unchanged_since, at - timedelta(seconds=after_s), limit)
        return [s for state, since in found if (s := diagnose(state, since, at, after_s)) is not None]


def now() -> datetime:
    return datetime.now(UTC)
