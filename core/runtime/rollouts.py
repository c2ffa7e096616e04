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
hand, is put right), so a restart or another replica resumes where the database says. A router
that does not answer then (restarted with Shipyard: nginx not running yet, haproxy's socket not
up) is tried again every ``RETRY_EVERY_S`` for the router's ``resume_wait``, the rollout saying
what it waits for (``NoteRouterWait``), before the rollout fails with the router's words; so is
an abort's change (traffic back on stable protects users: a moment's refusal must not leave it
on the canary).

A change that overruns the router's timeout is not taken as failed blind: the router is read
back (after nginx's ``settle``), and a change that took is confirmed as one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from core.commands import AdvanceRollout, ConfirmWeights, NoteRouterWait, RunCommand
from core.duration import format_duration
from core.engine import Decision
from core.environments import Environments
from core.errors import DatabaseUnreachable
from core.rollout import Rollout, describe_weights
from core.routing import RouterDef
from core.runtime.clock import Clock, utcnow
from core.runtime.routers import Router, RouterError, router_for
from core.states import RolloutStatus, RunStatus

log = logging.getLogger(__name__)
#: how often the loop looks at the rollouts under way
EVERY_S = 0.2
#: a router's lease outlives its timeout by this much (then another process may drive it)
LEASE_SLACK_S = 5.0
#: how long reading a router back after a change that overran its timeout may take
READ_BACK_S = 2.0
#: how often a resumed rollout's router that does not answer is tried again
RETRY_EVERY_S = 1.0


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
        #: resumed rollouts whose router did not answer: when the driver began waiting (its
        #: monotonic clock) and when it tries again (by run id)
        self._waiting: dict[str, float] = {}
        self._retry_at: dict[str, float] = {}
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
            if active.rollout.status is RolloutStatus.PENDING:
                continue
            try:
                await self._move_on(active, done)
            except (asyncio.CancelledError, DatabaseUnreachable):
                raise
            except Exception:  # one rollout's trouble must not hold the others up
                log.exception("driving the rollout of %s failed; retrying", active.run_id)
        return done

    async def _move_on(self, active: Active, done: Round) -> None:
        if self._needs_router(active):
            if self._retry_at.get(active.run_id, 0.0) <= time.monotonic():
                await self._drive(active, done)
        elif self._pause_over(active):
            decision = await self.handle(AdvanceRollout(run_id=active.run_id))
            if decision.accepted:
                done.advanced.append(active.run_id)

    def _needs_router(self, active: Active) -> bool:
        return active.rollout.router_pending or active.run_id in (self._unreconciled or ())

    def _pause_over(self, active: Active) -> bool:
        """A timed pause ended, or a blue/green's old colour is due to be retired."""
        rollout = active.rollout
        now = self.clock()
        if rollout.status is RolloutStatus.PROMOTING:
            due = rollout.retire_at is not None and rollout.retire_at <= now
            return due and active.run_status is RunStatus.RUNNING
        return (
            rollout.status is RolloutStatus.PROGRESSING
            and rollout.analysis is None
            and rollout.step_until is not None
            and rollout.step_until <= now
            and active.run_status is not RunStatus.PAUSED
        )

    async def _drive(self, active: Active, done: Round) -> None:
        rollout = active.rollout
        definition = self.environments.policy(active.environment).routers.get(rollout.router)
        timeout = definition.timeout + _settle(definition) + READ_BACK_S if definition is not None else 10.0
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
        applied, error = await self._apply(active, definition, desired)
        if not error and applied != desired:  # (the router said yes but applies something else)
            error = f"it applies {describe_weights(applied)} instead of {describe_weights(desired)}"
        why = self._retried(active) if error and definition is not None else None
        if why is not None and definition is not None:
            if await self._wait_more(active, definition, error, why):
                return
            error += f" (waited {definition.resume_wait:g}s for it to answer {why[1]})"
        elif rollout.router_wait and not rollout.router_pending:
            await self._note_wait(active, "")  # (it answers again)
        self._waiting.pop(active.run_id, None)
        self._retry_at.pop(active.run_id, None)
        if not rollout.router_pending and not error:
            self._put_right(active.run_id)
            done.reconciled.append(active.run_id)
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

    async def _apply(
        self, active: Active, definition: RouterDef | None, desired: dict[str, int]
    ) -> tuple[dict[str, int] | None, str]:
        """Set the router to ``desired``: what it applies then, and the error if it failed."""
        if definition is None:
            return None, f"{active.environment} has no router {active.rollout.router!r} configured now"
        router = self.routers(active.rollout.router, definition)
        # setting what is set already changes nothing: no need to read first. The whole change
        # (nginx: test, reload, settle) is bounded by the router's timeout, so it never outlives
        # the lease that keeps other replicas off this router
        try:
            async with asyncio.timeout(definition.timeout):
                return await router.apply(desired), ""
        except RouterError as exc:
            return None, exc.message
        except TimeoutError:
            return await self._read_back(router, definition, desired)

    async def _read_back(
        self, router: Router, definition: RouterDef, desired: dict[str, int]
    ) -> tuple[dict[str, int] | None, str]:
        """A change that overran the timeout may still have taken (an nginx reload that went
        through, cut short in its settle): read what the router applies, after the settle, and
        call it failed only when that is not ``desired``."""
        over = f"the change did not finish within the router's timeout of {definition.timeout:g}s"
        try:
            await asyncio.sleep(_settle(definition))
            async with asyncio.timeout(min(definition.timeout, READ_BACK_S)):
                applied = await router.read()
        except (RouterError, TimeoutError):
            return None, over
        if applied != desired:
            return applied, over  # (the engine says what it applies: the traffic now)
        log.warning("router change to %s overran its timeout but took", describe_weights(desired))
        return applied, ""

    def _retried(self, active: Active) -> tuple[str, str] | None:
        """Why a change that failed is tried again for the router's ``resume_wait`` (for the
        rollout's note, and for its reason once given up), or None: a resumed rollout (its router
        may be restarting with Shipyard), and an abort (traffic back on stable protects users:
        a moment's refusal must not leave it on the canary)."""
        if active.run_id in (self._unreconciled or ()):
            return "Shipyard restarted", "after a restart"
        if active.rollout.status is RolloutStatus.ABORTING:
            return f"the abort puts all traffic back on {active.rollout.pools[0]}", "during the abort"
        return None

    async def _wait_more(
        self, active: Active, definition: RouterDef, error: str, why: tuple[str, str]
    ) -> bool:
        """A resumed or aborting rollout's router did not answer: True while it is given more
        time (the rollout says what it waits for), False once ``resume_wait`` is over."""
        now = time.monotonic()
        began = self._waiting.get(active.run_id)
        if began is None:
            began = self._waiting[active.run_id] = now
            until = self.clock() + timedelta(seconds=definition.resume_wait)
            await self._note_wait(
                active,
                f"waiting for router {active.rollout.router} to answer before the rollout goes on "
                f"({why[0]}; up to {format_duration(definition.resume_wait)}, until "
                f"{until:%H:%M:%S} UTC): {error}",
            )
        if now - began >= definition.resume_wait:
            return False
        self._retry_at[active.run_id] = now + RETRY_EVERY_S
        log.info("router %s does not answer yet (%s); trying again", active.rollout.router, error)
        return True

    async def _note_wait(self, active: Active, waiting: str) -> None:
        command = NoteRouterWait(run_id=active.run_id, desired=dict(active.rollout.desired), waiting=waiting)
        decision = await self.handle(command)
        if not decision.accepted:
            log.info("router wait of %s not noted: %s", active.run_id, decision.reason)

    def _put_right(self, run_id: str) -> None:
        if self._unreconciled is not None:
            self._unreconciled.discard(run_id)


def _settle(definition: RouterDef | None) -> float:
    """How long the router takes to serve a change it accepted (nginx's ``settle``)."""
    return definition.nginx.settle if definition is not None and definition.nginx is not None else 0.0
