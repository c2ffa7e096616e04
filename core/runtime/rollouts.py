"""The router driver: puts each rollout's recorded weights on its router, and keeps its clock.

The engine records the weights a rollout wants (``desired``) before anything touches a router
(``core.canary``). Every ``every_s`` this loop looks at the rollouts under way and, for each
whose router has not confirmed them, takes the router's lease (``storage.rollouts``: of several
replicas one drives a router at a time), sets the weights, reads back what the router really
applies and reports it as ``ConfirmWeights``; a router that cannot be driven is reported with
its own words (the engine fails the rollout, leaving traffic where it was last confirmed). A
timed pause that came to its end is reported as ``AdvanceRollout``.

On start it reconciles: every rollout under way has its router set to the recorded weights
before it goes on (a process killed between recording and confirming, or a router changed by
hand, is put right), so a restart or another replica resumes where the database says.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from core.commands import AdvanceRollout, ConfirmWeights, RunCommand
from core.engine import Decision
from core.environments import Environments
from core.errors import DatabaseUnreachable
from core.rollout import Rollout
from core.routing import RouterDef
from core.runtime.clock import Clock, utcnow
from core.runtime.routers import Router, RouterError, router_for
from core.states import RolloutStatus, RunStatus

log = logging.getLogger(__name__)
#: how often the loop looks at the rollouts under way
EVERY_S = 0.2
#: a router's lease outlives its timeout by this much (then another process may drive it)
LEASE_SLACK_S = 5.0


class Active(Protocol):
    """``storage.rollouts.ActiveRollout``."""

    @property
    def run_id(self) -> str: ...
    @property
    def run_status(self) -> RunStatus: ...
    @property
    def environment(self) -> str: ...
    @property
    def rollout(self) -> Rollout: ...
    @property
    def router_key(self) -> str: ...


class RolloutPort(Protocol):
    """What the driver needs from the store (``storage.rollouts.RolloutStore``)."""

    def active(self) -> list[Any]: ...
    def hold(self, key: str, holder: str, now: datetime, until: datetime) -> bool: ...
    def release(self, key: str, holder: str) -> None: ...


#: runs a blocking store call off the event loop (``Orchestrator.db``)
Db = Callable[..., Awaitable[Any]]
Handle = Callable[[RunCommand], Awaitable[Decision]]
Routers = Callable[[str, RouterDef], Router]


@dataclass
class Round:
    """What one round did (for tests and the benchmark)."""

    confirmed: list[ConfirmWeights] = field(default_factory=list)
    advanced: list[str] = field(default_factory=list)
    reconciled: list[str] = field(default_factory=list)


class RolloutDriver:
    def __init__(
        self,
        rollouts: RolloutPort,
        environments: Environments,
        *,
        handle: Handle,
        db: Db,
        clock: Clock = utcnow,
        workdir: Path | None = None,
        routers: Routers | None = None,
        every_s: float = EVERY_S,
        holder: str | None = None,
    ) -> None:
        self.rollouts = rollouts
        self.environments = environments
        self.handle = handle
        self.db = db
        self.clock = clock
        self.every_s = every_s
        self.routers: Routers = routers or (lambda name, d: router_for(name, d, workdir=workdir))
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        #: rollouts under way when this process started whose router it has not put right
        #: yet (by run id); None until it has read them. Rollouts that start later need no
        #: reconciling: their routers are set as their weights change (a replica that did not
        #: set them would only set them again)
        self._unreconciled: set[str] | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="shipyard-rollouts")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def wake(self) -> None:
        """Look at the rollouts now (a decision just recorded new weights)."""
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except DatabaseUnreachable:
                log.debug("the router driver waits for the database")
            except Exception:
                log.exception("router driver round failed; retrying")
            try:
                await asyncio.wait_for(self._wake.wait(), self.every_s)
            except TimeoutError:
                pass
            self._wake.clear()

    async def tick(self) -> Round:
        """One round: drive the routers that need it, fire the pauses that ended."""
        done = Round()
        actives = await self.db(self.rollouts.active)
        if self._unreconciled is None:
            self._unreconciled = {a.run_id for a in actives}
        for active in actives:
            rollout: Rollout = active.rollout
            if rollout.status in (RolloutStatus.PENDING,):
                continue
            if self._needs_router(active):
                await self._drive(active, done)
            elif self._pause_over(active):
                decision = await self.handle(AdvanceRollout(run_id=active.run_id))
                if decision.accepted:
                    done.advanced.append(active.run_id)
        return done

    def _needs_router(self, active: Active) -> bool:
        return active.rollout.router_pending or active.run_id in (self._unreconciled or ())

    def _pause_over(self, active: Active) -> bool:
        rollout = active.rollout
        return (
            rollout.status is RolloutStatus.PROGRESSING
            and rollout.analysis is None
            and rollout.step_until is not None
            and rollout.step_until <= self.clock()
            and active.run_status is not RunStatus.PAUSED
        )

    async def _drive(self, active: Active, done: Round) -> None:
        rollout = active.rollout
        definition = self.environments.policy(active.environment).routers.get(rollout.router)
        timeout = definition.timeout if definition is not None else 10.0
        now = self.clock()
        until = now + timedelta(seconds=timeout + LEASE_SLACK_S)
        if not await self.db(self.rollouts.hold, active.router_key, self.holder, now, until):
            return  # another replica drives this router now
        try:
            # read again under the lease: the replica that held it may have moved the rollout
            # on meanwhile, and setting the weights read before would undo its change
            fresh = next((a for a in await self.db(self.rollouts.active) if a.run_id == active.run_id), None)
            if fresh is not None and self._needs_router(fresh):
                await self._set(fresh, definition, done)
        finally:
            await self.db(self.rollouts.release, active.router_key, self.holder)

    async def _set(self, active: Active, definition: RouterDef | None, done: Round) -> None:
        rollout = active.rollout
        desired = dict(rollout.desired)
        applied: dict[str, int] | None = None
        error = ""
        if definition is None:
            error = f"{active.environment} has no router {rollout.router!r} configured now"
        else:
            router = self.routers(rollout.router, definition)
            try:  # (setting what is set already changes nothing: no need to read first)
                applied = await router.apply(desired)
            except RouterError as exc:
                error = exc.message
        if not rollout.router_pending and not error:
            self._put_right(active.run_id)
            done.reconciled.append(active.run_id)
            if applied != dict(rollout.applied or {}):
                log.warning("router %s was not at %s; set it back", rollout.router, desired)
            return
        command = ConfirmWeights(run_id=active.run_id, desired=desired, applied=applied, error=error)
        decision = await self.handle(command)
        if decision.accepted:
            self._put_right(active.run_id)
            done.confirmed.append(command)
            if error:
                log.warning("router %s of %s failed: %s", rollout.router, active.environment, error)
        else:
            log.info("router report for %s refused: %s", active.run_id, decision.reason)

    def _put_right(self, run_id: str) -> None:
        if self._unreconciled is not None:
            self._unreconciled.discard(run_id)
