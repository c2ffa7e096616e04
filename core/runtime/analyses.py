"""The analysis loop: measures the checks that are due, records them, and acts on what the
measurements say (``core.analysis`` decides; ``storage.analyses`` claims and keeps).

Every ``every_s`` it claims the due checks nobody holds (a lease in the database, so of several
replicas one measures each check, and a dead one's lease lapses), measures them concurrently (at
most ``concurrency`` at once; it claims no more than it has room for), and records them: the
measurements that finish while others are under way (a round's, usually) are recorded together
in one transaction (``record_many``; a measurement waits ``LINGER_S`` at most for the others),
then each is acted on:

* a health watch's measurement recomputes its environment's health in the same transaction; a
  change is handed to ``on_health_change`` (Slack, webhooks);
* a verification's measurement is judged (``verdict``); a verdict is handed to ``on_verdict``
  (``core.runtime.verification``: the engine ends the stage's verification, the analysis with
  it, and rolls back, in one transaction; of two replicas judging at once one wins, the other
  is refused). Without ``on_verdict`` the loop ends the analysis itself. Verifications whose
  deadline has come are judged every round too, with no measurement needed (one whose check is
being measured waits for that measurement, judged when it is recorded).

A check's next measurement is due ``interval`` after the previous one was due (not after it
was taken), so lateness does not drift; a check later than a whole interval skips the missed
ones. The lateness of every measurement (when it was taken minus when it was due) is kept in
``lateness`` for the benchmark and the logs. Everything it needs is in the database, so a new
loop (a restart, another replica) resumes each verification with its deadline and tallies.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiohttp

from core.analysis import (
    Analysis,
    AnalysisKind,
    AnalysisStatus,
    CheckTally,
    DueCheck,
    HealthChange,
    Taken,
    verdict,
)
from core.checks import CheckDef, CheckResult, HealthWatch, Measurement, VerifyPolicy
from core.environments import Environments
from core.errors import DatabaseUnreachable
from core.runtime.clock import Clock, utcnow
from core.runtime.measure import client_session
from core.runtime.measure import measure as measure_once

log = logging.getLogger(__name__)
T = TypeVar("T")
#: how often the loop looks for due checks (a check is measured at most about this late)
EVERY_S = 0.5
#: measurements under way at most, per process
CONCURRENCY = 64
#: the longest a finished measurement waits for those still under way, to be recorded with them
LINGER_S = 0.05
#: a claim outlives the longest check timeout by this much (then another process may take it)
LEASE_SLACK_S = 30.0
#: who ends a verification the measurements decided
BY = "shipyard"


class Measure(Protocol):
    """``core.runtime.measure.measure``: measure one check once; never raises."""

    def __call__(
        self,
        name: str,
        check: CheckDef,
        *,
        now: Callable[[], datetime],
        workdir: Path,
        env: Mapping[str, str] | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> Awaitable[Measurement]: ...


class AnalysisPort(Protocol):
    """What the loop needs from the store (``storage.analyses.AnalysisStore``)."""

    def ensure_health(
        self,
        watched: Mapping[str, HealthWatch | None],
        now: datetime,
        intervals: Mapping[str, Mapping[str, float]] | None = None,
    ) -> None: ...
    def claim_due(self, now: datetime, holder: str, lease_s: float, limit: int) -> list[DueCheck]: ...
    def record_many(self, holder: str, taken: Sequence[Taken]) -> Sequence[Recorded | None]: ...
    def end(self, analysis_id: str, status: AnalysisStatus, reason: str, by: str, now: datetime) -> bool: ...
    def past_deadline(
        self, now: datetime, limit: int = 100
    ) -> list[tuple[Analysis, dict[str, CheckTally]]]: ...
    def release(self, holder: str) -> int: ...


class Recorded(Protocol):
    """``storage.analyses.Recorded``."""

    @property
    def analysis(self) -> Analysis: ...
    @property
    def tallies(self) -> dict[str, CheckTally]: ...
    @property
    def health_change(self) -> HealthChange | None: ...


#: runs a blocking store call off the event loop (``Orchestrator.db``)
Db = Callable[..., Awaitable[Any]]
OnVerdict = Callable[[Analysis, AnalysisStatus, str], Awaitable[None]]
OnHealthChange = Callable[[HealthChange], Awaitable[None]]


def holder_name() -> str:
    """This process's name on the leases it takes (unique per loop)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class _Recording:
    """What recording one measurement came to: ``judge_at`` is set on the last measurement of a
    verification in its batch (its tallies are judged once a batch, at the latest ``at``)."""

    recorded: Recorded | None
    judge_at: datetime | None = None


def next_due(due_at: datetime, interval_s: float, now: datetime) -> datetime:
    """The first ``due_at + k * interval`` after ``now`` (k ≥ 1): on the schedule the check
    started on, skipping occurrences already missed."""
    step = timedelta(seconds=interval_s)
    missed = max(0, math.floor((now - due_at) / step))
    return due_at + step * (missed + 1)


@dataclass(slots=True)
class Round:
    """What one round did (for tests)."""

    measured: list[Measurement] = field(default_factory=list)
    lost: list[DueCheck] = field(default_factory=list)  #: recorded by nobody: the claim had lapsed
    verdicts: list[tuple[Analysis, AnalysisStatus, str]] = field(default_factory=list)
    health_changes: list[HealthChange] = field(default_factory=list)


class AnalysisLoop:
    def __init__(
        self,
        analyses: AnalysisPort,
        environments: Environments,
        *,
        db: Db,
        workdir: Path,
        measure: Measure | None = None,
        on_verdict: OnVerdict | None = None,
        on_health_change: OnHealthChange | None = None,
        session: aiohttp.ClientSession | None = None,
        holder: str | None = None,
        every_s: float = EVERY_S,
        concurrency: int = CONCURRENCY,
        linger_s: float = LINGER_S,
        clock: Clock = utcnow,
    ) -> None:
        self.analyses = analyses
        self.environments = environments
        self.db = db
        self.workdir = workdir
        self.measure: Measure = measure or measure_once
        self.on_verdict = on_verdict
        self.on_health_change = on_health_change
        #: shared by the http and Prometheus checks (made at start when not given, keeping no cookies)
        self.session = session
        self._own_session = False
        self.holder = holder or holder_name()
        self.every_s = every_s
        self.concurrency = concurrency
        self.linger_s = linger_s
        self.clock = clock
        timeouts = [c.timeout for p in environments.root.values() for c in p.checks.values()]
        self.lease_s = max(timeouts, default=0.0) + LEASE_SLACK_S
        #: seconds each measurement was taken after it was due, the latest last
        self.lateness: deque[float] = deque(maxlen=100_000)
        self._task: asyncio.Task[None] | None = None
        self._measuring: set[asyncio.Task[None]] = set()
        #: measurements taken, waiting to be recorded together; the task recording them
        self._taken: list[tuple[Taken, asyncio.Future[_Recording]]] = []
        self._recorder: asyncio.Task[None] | None = None
        self._in_flight = 0  #: measurements under way (not yet taken)
        self._settled = asyncio.Event()  #: set when one is taken

    @property
    def watched(self) -> dict[str, HealthWatch | None]:
        return {name: policy.health for name, policy in self.environments.root.items()}

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Make the configured health watches exist, then start measuring."""
        intervals = {
            env: {name: check.interval for name, check in policy.checks.items()}
            for env, policy in self.environments.root.items()
        }
        await self.db(self.analyses.ensure_health, self.watched, self.clock(), intervals)
        if self.session is None:
            self.session, self._own_session = client_session(), True
        self._task = asyncio.create_task(self._loop(), name="shipyard-analyses")

    async def stop(self) -> None:
        """Stop measuring: measurements under way are dropped and their checks let go, so
        another process takes them at once instead of when their leases run out."""
        tasks = [t for t in (self._task, self._recorder, *self._measuring) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = self._recorder = None
        self._taken.clear()
        if self._own_session and self.session is not None:
            await self.session.close()
            self.session, self._own_session = None, False
        try:
            await self.db(self.analyses.release, self.holder)
        except Exception:  # (the leases lapse on their own)
            log.warning("could not release the checks this process held", exc_info=True)

    async def _loop(self) -> None:
        while True:
            full = False
            try:
                room = self.concurrency - len(self._measuring)
                started = await self._round(self.clock(), Round())
                full = room > 0 and len(started) >= room
            except asyncio.CancelledError:
                raise
            except DatabaseUnreachable:  # (said once by the engine's health): look again next time
                log.debug("analysis loop waits for the database")
            except Exception:
                log.exception("analysis round failed; retrying")
            if full:
                # the claim took all the room there was, so more checks may be due now: claim
                # again once a quarter of the room is free rather than a whole round later
                # (many checks due at once would otherwise wait rounds for their turn)
                await self._until_room(max(1, self.concurrency // 4))
            else:
                await asyncio.sleep(self.every_s)

    async def _until_room(self, wanted: int) -> None:
        """Wait until ``wanted`` measurements could start, for ``every_s`` at most."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.every_s
        while self.concurrency - len(self._measuring) < wanted and self._measuring:
            left = deadline - loop.time()
            if left <= 0:
                return
            await asyncio.wait(set(self._measuring), timeout=left, return_when=asyncio.FIRST_COMPLETED)

    # -- rounds -------------------------------------------------------------------------------
    async def tick(self, at: datetime | None = None) -> Round:
        """One round at ``at`` (now by default), waiting for its measurements: for tests."""
        done = Round()
        started = await self._round(at or self.clock(), done)
        await asyncio.gather(*started)
        return done

    async def _round(self, now: datetime, done: Round) -> list[asyncio.Task[None]]:
        room = self.concurrency - len(self._measuring)
        started: list[asyncio.Task[None]] = []
        if room > 0:
            for due in await self.db(self.analyses.claim_due, now, self.holder, self.lease_s, room):
                task = asyncio.create_task(self._measure(due, done), name=f"measure {due.check}")
                self._measuring.add(task)
                task.add_done_callback(self._measuring.discard)
                started.append(task)
        for analysis, tallies in await self.db(self.analyses.past_deadline, now):
            await self._judge(analysis, tallies, now, done)
        return started

    async def _measure(self, due: DueCheck, done: Round) -> None:
        try:
            await self._measure_and_record(due, done)
        except asyncio.CancelledError:
            raise
        except DatabaseUnreachable:
            log.debug("a measurement of %s waits for the database (its claim lapses)", due.check)
        except Exception:
            log.exception("measuring %s in %s failed", due.check, due.environment)

    async def _measure_and_record(self, due: DueCheck, done: Round) -> None:
        policy = self.environments.policy(due.environment)
        check = policy.checks.get(due.check)
        now = self.clock()
        self.lateness.append(max(0.0, (now - due.due_at).total_seconds()))
        if check is None:
            interval = 60.0
            m = Measurement(
                due.check, now, CheckResult.ERROR, None, f"{due.check}: no such check is configured now"
            )
        else:
            interval = check.interval
            self._in_flight += 1
            try:
                m = await self.measure(
                    due.check, check, now=self.clock, workdir=self.workdir, session=self.session
                )
            finally:
                self._in_flight -= 1
        watch = policy.health if due.kind is AnalysisKind.HEALTH else None
        next_at = next_due(due.due_at, interval, self.clock())
        outcome = await self._record(Taken(due.analysis_id, due.check, m, next_at, watch))
        recorded = outcome.recorded
        if recorded is None:
            done.lost.append(due)
            return
        done.measured.append(m)
        if recorded.health_change is not None:
            done.health_changes.append(recorded.health_change)
            log.info(
                "%s is %s (was %s): %s",
                due.environment,
                recorded.health_change.to_state,
                recorded.health_change.from_state,
                recorded.health_change.reason,
            )
            if self.on_health_change is not None:
                await self.on_health_change(recorded.health_change)
        if recorded.analysis.kind is not AnalysisKind.HEALTH and outcome.judge_at is not None:
            await self._judge(recorded.analysis, recorded.tallies, outcome.judge_at, done)

    # -- recording, in batches ----------------------------------------------------------------
    async def _record(self, taken: Taken) -> _Recording:
        """Record ``taken`` with the others taken meanwhile (``_record_batches``)."""
        recording: asyncio.Future[_Recording] = asyncio.get_running_loop().create_future()
        self._taken.append((taken, recording))
        self._settled.set()
        if self._recorder is None or self._recorder.done():
            self._recorder = asyncio.create_task(self._record_batches(), name="shipyard-analyses-record")
        return await recording

    async def _record_batches(self) -> None:
        """Record what is taken, a batch a transaction, until nothing is left; each batch once
        the measurements under way are taken too, or ``linger_s`` after it began to wait."""
        while self._taken:
            await self._linger()
            batch, self._taken = self._taken, []
            try:
                found = await self.db(self.analyses.record_many, self.holder, [t for t, _ in batch])
            except asyncio.CancelledError:
                for _, recording in batch:
                    recording.cancel()
                raise
            except Exception as exc:  # each measurement's task reports it
                for _, recording in batch:
                    if not recording.done():
                        recording.set_exception(exc)
                continue
            judge_at: dict[str, datetime] = {}
            last: dict[str, int] = {}
            for i, ((taken, _), recorded) in enumerate(zip(batch, found, strict=True)):
                if recorded is not None and recorded.analysis.kind is not AnalysisKind.HEALTH:
                    aid = taken.analysis_id
                    judge_at[aid] = max(judge_at.get(aid, taken.measurement.at), taken.measurement.at)
                    last[aid] = i
            for i, ((taken, recording), recorded) in enumerate(zip(batch, found, strict=True)):
                if not recording.done():  # (its task may have been cancelled)
                    at = judge_at[taken.analysis_id] if last.get(taken.analysis_id) == i else None
                    recording.set_result(_Recording(recorded, at))

    async def _linger(self) -> None:
        deadline = asyncio.get_running_loop().time() + self.linger_s
        while self._in_flight > 0:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return
            self._settled.clear()
            try:
                async with asyncio.timeout(left):
                    await self._settled.wait()
            except TimeoutError:
                return

    async def _judge(
        self, analysis: Analysis, tallies: dict[str, CheckTally], now: datetime, done: Round
    ) -> None:
        """End a verification the tallies decide, and act on it if this process ended it."""
        if analysis.status is not AnalysisStatus.RUNNING or analysis.deadline is None:
            return
        policy = self._policy(analysis)
        configured = self.environments.policy(analysis.environment).checks
        gone = [name for name in analysis.checks if name not in configured]
        if policy is None:
            status, reason = (
                AnalysisStatus.INCONCLUSIVE,
                f"{analysis.environment} has no verification configured now",
            )
        elif gone:
            # (measured no more, its errors would fail a release they say nothing about)
            status, reason = AnalysisStatus.INCONCLUSIVE, f"{gone[0]}: no such check is configured now"
        else:
            status, reason = verdict(policy, tallies, now, analysis.deadline)
        if status is AnalysisStatus.RUNNING:
            return
        if self.on_verdict is not None:
            # the engine ends the analysis in the transaction that ends the stage's verification
            # (``core.runtime.writes``): a verdict it refuses is judged again next round
            done.verdicts.append((analysis, status, reason))
            await self.on_verdict(analysis, status, reason)
            return
        if not await self.db(self.analyses.end, analysis.id, status, reason, BY, now):
            return  # another process (or a person) ended it
        log.info("verification of %s in %s %s: %s", analysis.run_id, analysis.environment, status, reason)
        done.verdicts.append((analysis, status, reason))

    def _policy(self, analysis: Analysis) -> VerifyPolicy | None:
        """The limits an analysis is judged by: a canary step's own, or its environment's
        ``verify`` (None: removed from the configuration since)."""
        if analysis.limits is not None:
            return VerifyPolicy.model_validate({"checks": list(analysis.checks), "for": 1, **analysis.limits})
        policy = self.environments.policy(analysis.environment).verify
        return policy.model_copy(update={"checks": list(analysis.checks)}) if policy is not None else None

    # -- figures ------------------------------------------------------------------------------
    def lateness_quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1) of the lateness kept, in seconds; None before any."""
        if not self.lateness:
            return None
        ordered: Sequence[float] = sorted(self.lateness)
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1 if q > 0 else 0)]
