"""Which runners call this server, written down without a write per call.

Every claim and lease renewal says its runner is alive; recording each would add a transaction
to every poll. ``Attendance`` records a runner when it first calls, when it describes itself
differently (new labels, version, capacity) and then at most every ``every_s`` (at most half its
lease, so "online: seen within two leases" holds), and remembers the runner's draining flag in
between. A drain set through this process forgets the memory at once; one set on another
replica is learned within ``every_s`` (the claim query hands a draining runner nothing anyway).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Protocol

from core.runtime.clock import Clock
from core.runtime.orchestrator import Orchestrator

#: at most this long between two records of one runner
EVERY_S = 5.0


class Registry(Protocol):
    """``storage.runners.RunnerRegistry``, as far as attendance needs it."""

    def seen(
        self,
        name: str,
        *,
        labels: Sequence[str],
        version: str,
        capacity: int,
        lease_s: float,
        now: datetime,
    ) -> bool: ...

    def touch(self, name: str, now: datetime) -> bool: ...


@dataclass(frozen=True, slots=True)
class _Noted:
    described: tuple[object, ...]
    at: float
    draining: bool


class Attendance:
    def __init__(
        self,
        registry: Registry,
        orchestrator: Orchestrator,
        clock: Clock,
        every_s: float = EVERY_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.orch = orchestrator
        self.clock = clock
        self.every_s = every_s
        self.monotonic = monotonic
        self._noted: dict[str, _Noted] = {}

    async def claiming(
        self, name: str, *, labels: Sequence[str], version: str, capacity: int, lease_s: float
    ) -> bool:
        """``name`` asks for jobs; True if it is draining (it is then handed none)."""
        described = (tuple(sorted(set(labels))), version, capacity, lease_s)
        noted = self._noted.get(name)
        if noted is not None and noted.described == described and not self._due(noted, lease_s):
            return noted.draining
        seen = partial(
            self.registry.seen,
            labels=described[0],
            version=version,
            capacity=capacity,
            lease_s=lease_s,
            now=self.clock(),
        )
        draining = await self.orch.db(seen, name)
        self._noted[name] = _Noted(described, self.monotonic(), draining)
        return draining

    async def renewing(self, name: str, lease_s: float) -> bool:
        """``name`` renews its leases (it may be too busy to claim); True if it is draining."""
        noted = self._noted.get(name)
        if noted is not None and not self._due(noted, lease_s):
            return noted.draining
        draining = await self.orch.db(self.registry.touch, name, self.clock())
        # (a runner not described here yet, after a restart, describes itself on its next claim)
        self._noted[name] = _Noted(noted.described if noted else (), self.monotonic(), draining)
        return draining

    def forget(self, name: str) -> None:
        """Ask the database next time (``name`` was drained, resumed or deleted here)."""
        self._noted.pop(name, None)

    def _due(self, noted: _Noted, lease_s: float) -> bool:
        return self.monotonic() - noted.at >= min(self.every_s, lease_s / 2)
