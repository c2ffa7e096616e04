"""The imperative shell around the engine: one per ``serve`` process.

* ``handle`` queues a command and resolves when its transaction has committed. Commands that
  arrive together are applied in one transaction (group commit); the engine is still asked
  about each one separately.
* Database work runs on a dedicated thread pool (a single thread on SQLite, its one writer).
* After each commit it wakes whoever cares: local runners (new work, jobs to kill) and
  readers of the event log (``wait_for_events``).
* ``jobs_ready`` is the same wake-up for jobs another replica readied (``storage.wakeups``
  calls it on PostgreSQL).
* ``tick`` turns what the clock made due into commands: expired job leases, gate deadlines,
  automated gate checks.
* Every trip to the database reports to ``health`` (``core.runtime.health``): a failure to
  reach the database reaches its caller as ``DatabaseUnreachable`` and is logged once per outage.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from core.assignment import Assignment
from core.commands import (
    AdmitRun,
    CancelRun,
    Command,
    ExpireLease,
    RecordGateCheck,
    TimeoutGate,
    TimeoutRun,
)
from core.engine import Decision
from core.errors import DatabaseUnreachable
from core.events import Event
from core.model import SYSTEM
from core.runtime.claims import ClaimJobs
from core.runtime.executor import Executor
from core.runtime.health import DatabaseHealth
from core.runtime.service import Service, Then
from core.runtime.waiting import idle_wait, wait_event
from core.runtime.workspaces import SWEEP_EVERY_S, Workspaces
from core.states import JobStatus

log = logging.getLogger(__name__)
T = TypeVar("T")


class LocalRunner(Protocol):
    def wake(self) -> None: ...
    def stop_jobs(self, attempts: Sequence[tuple[str, int]]) -> None: ...


@dataclass
class _Pending:
    command: Command | ClaimJobs
    future: asyncio.Future[Any]
    then: Then | None = None


class Orchestrator:
    def __init__(
        self,
        service: Service,
        *,
        workdir: Path,
        gate_executor: Executor | None = None,
        poll_interval: float = 1.0,
        check_lease_s: float = 60.0,
        batch_size: int = 256,
    ) -> None:
        self.service = service
        self.store = service.store
        #: where automated gate checks run, a folder per run (``sweep_workspaces``)
        self.workspaces = Workspaces(workdir)
        self.gate_executor = gate_executor
        self.poll_interval = poll_interval
        self.check_lease_s = check_lease_s
        #: requests applied in one transaction at most: a burst (a second's schedules, a flood
        #: of API triggers) pays per-transaction costs once per this many
        self.batch_size = batch_size
        self.idle_wait = idle_wait(poll_interval)
        self.pool = ThreadPoolExecutor(max_workers=self.store.max_workers, thread_name_prefix="shipyard-db")
        #: whether the database answers: shared by everything in this process that uses it
        self.health = DatabaseHealth(self.store.unreachable)
        self.runners: list[LocalRunner] = []
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._listeners: list[asyncio.Event] = []
        self._wake = asyncio.Event()
        #: the timer rests ``idle_wait`` (the last tick found nothing in flight) until a commit,
        #: or another process's jobs, wake it; ``_stirred`` counts those, for the ones that come
        #: while a tick is reading
        self._idle = False
        self._stirred = 0
        self._tasks: list[asyncio.Task[Any]] = []
        #: the automated gate checks being measured, with their runs
        self._checks: dict[asyncio.Task[Any], str] = {}
        #: told of each group commit: how many requests it applied and how long it took (s)
        self.on_commit: list[Callable[[int, float], None]] = []

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self, *, timers: bool = True) -> None:
        """Start committing; and acting on the clock unless ``timers`` is False (then
        ``start_timers`` does, once what must come first has been done)."""
        self._tasks = [asyncio.create_task(self._commit_loop(), name="shipyard-commits")]
        if timers:
            self.start_timers()

    def start_timers(self) -> None:
        self._tasks.append(asyncio.create_task(self._timer_loop(), name="shipyard-timers"))

    def start_sweeping(self, every_s: float = SWEEP_EVERY_S) -> None:
        """Remove the gate checks' workspaces of ended runs now and every ``every_s``: for a
        server whose built-in runner does not (it has none: it sweeps the same folder)."""
        sweeping = self.workspaces.sweep_every(every_s, self._runs_over, self._checked_runs)
        self._tasks.append(asyncio.create_task(sweeping, name="shipyard-workspaces"))

    async def sweep_workspaces(self) -> int:
        """Remove the gate checks' workspaces of runs that are over; returns how many went."""
        return await self.workspaces.sweep(self._runs_over, self._checked_runs)

    async def _runs_over(self, run_ids: list[str]) -> set[str]:
        return await self.db(self.service.runs_over, run_ids)

    def _checked_runs(self) -> set[str]:
        return set(self._checks.values())

    async def stop(self) -> None:
        for task in [*self._tasks, *self._checks]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._checks, return_exceptions=True)
        self._tasks = []
        self.pool.shutdown(wait=True)

    @property
    def running(self) -> bool:
        return bool(self._tasks) and not any(t.done() for t in self._tasks)

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking store call on the database threads; a failure to reach the database
        raises ``DatabaseUnreachable``."""
        started = self.health.now()
        try:
            result = await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        except Exception as exc:
            if (down := self.health.failed(exc)) is None:
                raise
            raise down from exc
        self.health.succeeded(started)
        return result

    # -- commands -----------------------------------------------------------------------------
    async def handle(self, command: Command, then: Then | None = None) -> Decision:
        """Apply ``command``; returns once it has been committed (or refused). ``then`` runs in
        the command's transaction, on a database thread (``Service.commit``)."""
        future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(command, future, then))
        return await future

    async def claim(
        self, runner: str, limit: int, lease_s: float, labels: Sequence[str] = ()
    ) -> list[Assignment]:
        """Claim jobs for a runner carrying ``labels``; rides along with the next group commit."""
        future: asyncio.Future[list[Assignment]] = asyncio.get_running_loop().create_future()
        request = ClaimJobs(runner=runner, limit=limit, lease_s=lease_s, labels=tuple(labels))
        await self._queue.put(_Pending(request, future))
        return await future

    async def _commit_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            commands = [p for p in batch if not isinstance(p.command, ClaimJobs)]
            claims = [p for p in batch if isinstance(p.command, ClaimJobs)]
            requests: list[Any] = [
                [p.command for p in commands],
                [p.command for p in claims],
                [p.then for p in commands],
            ]
            started = self.health.now()
            try:  # (not ``db``: a commit hands each request its failure rather than raising)
                decisions, taken = await asyncio.get_running_loop().run_in_executor(
                    self.pool, self.service.commit, *requests
                )
            except Exception as exc:  # the store failed: fail these requests, keep serving
                if (down := self.health.failed(exc)) is None:
                    log.exception("could not apply %d request(s)", len(batch))
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(down or exc)
                continue
            outcomes = [*decisions, *taken]
            self._report_health(outcomes, started)
            for told in self.on_commit:
                told(len(batch), self.health.now() - started)
            for pending, outcome in zip([*commands, *claims], outcomes, strict=True):
                if pending.future.done():
                    continue
                if isinstance(outcome, Exception):
                    pending.future.set_exception(self.health.classify(outcome) or outcome)
                else:
                    pending.future.set_result(outcome)
            await self._after_commit([d for d in decisions if isinstance(d, Decision)])

    def _report_health(self, outcomes: Sequence[object], started: float) -> None:
        """One commit's word on the database: it answered if any request went through, and it
        could not be reached if every one failed to reach it."""
        failures = [o for o in outcomes if isinstance(o, Exception)]
        if len(failures) < len(outcomes):
            self.health.succeeded(started)
        elif unreached := [f for f in failures if self.health.classify(f) is not None]:
            self.health.failed(unreached[0])

    async def _after_commit(self, decisions: Sequence[Decision]) -> None:
        accepted = [d for d in decisions if d.accepted and d.events]
        if not accepted:
            return
        if log.isEnabledFor(logging.INFO):
            for event in (e for d in accepted for e in d.events):
                _log_event(event)
        self._stir()
        stop = [job for d in accepted for job in d.jobs_to_stop]
        queued = any(e.to_status == JobStatus.QUEUED for d in accepted for e in d.events)
        for runner in self.runners:
            if stop:
                runner.stop_jobs(stop)
            if queued:
                runner.wake()
        self.notify()

    def jobs_ready(self) -> None:
        """Another process made jobs ready (a hint, e.g. PostgreSQL ``NOTIFY``): wake this
        process's runners and its claim long polls, which claim what is there."""
        self._stir()
        for runner in self.runners:
            runner.wake()
        self.notify()

    def notify(self) -> None:
        """Tell readers of the event log that something was appended."""
        for flag in self._listeners:
            flag.set()

    def listen(self) -> asyncio.Event:
        """A flag set whenever this process appends events. A follower clears it before it
        reads the log and waits on it after, so an append during its work is never missed."""
        flag = asyncio.Event()
        self._listeners.append(flag)
        return flag

    def unlisten(self, flag: asyncio.Event) -> None:
        """Stop setting ``flag`` (from ``listen``)."""
        self._listeners.remove(flag)

    async def wait_for_events(self, timeout: float) -> None:
        """Return when events are appended by this process, or after ``timeout`` (for a
        one-off wait; a follower that loops should ``listen``)."""
        flag = self.listen()
        try:
            await wait_event(flag, timeout)
        finally:
            self.unlisten(flag)

    # -- timers -------------------------------------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    def _stir(self) -> None:
        """Something may be in flight now: an idle timer looks at once."""
        self._stirred += 1
        if self._idle:
            self._wake.set()

    async def _timer_loop(self) -> None:
        while True:
            self._idle, stirred = False, self._stirred
            try:
                await self.tick()
            except DatabaseUnreachable as exc:  # (said once by ``health``)
                log.debug("timer tick skipped: %s", exc.__cause__ or exc)
            except Exception:
                log.exception("timer tick failed; trying again in %.1fs", self.poll_interval)
            self._idle = self._idle and self._stirred == stirred
            await wait_event(self._wake, self.idle_wait if self._idle else self.poll_interval)
            self._wake.clear()

    async def tick(self) -> int:
        """Act on everything the clock has made due; returns how many commands it issued."""
        timers = await self.db(self.service.due, self.check_lease_s)
        self._idle = timers.idle
        expired = [ExpireLease(run_id=r, job_id=j, attempt=a) for r, j, a in timers.expired]
        commands: list[Command] = list(expired)
        commands += [TimeoutGate(run_id=r, gate=g) for r, g in timers.gate_deadlines]
        commands += [TimeoutRun(run_id=r) for r in timers.run_deadlines]
        commands += [
            CancelRun(run_id=r, actor=SYSTEM, reason=f"superseded by {by}", only_if_queued=True)
            for r, by in timers.superseded
        ]
        commands += [AdmitRun(run_id=r) for r in timers.admissions]
        if commands:
            decisions = await asyncio.gather(*(self.handle(c) for c in commands))
            for command, decision in zip(expired, decisions, strict=False):
                why = [e.data.get("reason") for e in decision.events if e.to_status == "lost"]
                if decision.accepted and why:
                    run, job, attempt = command.run_id, command.job_id, command.attempt
                    log.warning("run %s job %s attempt %d declared %s", run, job, attempt, why[0])
        for check in timers.gate_checks:
            task = asyncio.create_task(self._check_gate(check))
            self._checks[task] = check.run_id
            task.add_done_callback(self._checks.pop)
        return len(commands) + len(timers.gate_checks)

    async def _check_gate(self, check: Assignment) -> None:
        executor = self.gate_executor
        if executor is None:
            return
        lines: list[str] = []
        result = await executor.execute(
            check, self.workspaces.of(check.run_id), lambda _s, text: lines.append(text)
        )
        tail = "".join(lines).strip().splitlines()[-1:] or [""]
        passed = result.outcome == "succeeded"
        detail = tail[0][:200] if tail[0] else ("" if passed else f"check exited with {result.exit_code}")
        try:
            await self.handle(
                RecordGateCheck(run_id=check.run_id, gate=check.job_id, passed=passed, detail=detail)
            )
        except DatabaseUnreachable:  # its claim runs out and the check is run again
            log.debug("the result of gate check %s waits for the database", check.label)


def _log_event(event: Event) -> None:
    """One INFO line per committed state change, carrying what it is about (``bot.logs``
    writes these as JSON fields): the run, the stage's name, the job's or gate's id and, when
    the change names one, the principal."""
    data = event.data
    context: dict[str, object] = {"run": event.run_id}
    if isinstance(stage := data.get("stage"), str):
        context["stage"] = stage
    if event.subject in ("job", "gate"):
        context[event.subject] = event.subject_id
    if isinstance(who := data.get("by") or data.get("actor"), str):
        context["principal"] = who
    moved = f": {event.from_status} -> {event.to_status}" if event.to_status else ""
    log.info("%s %s%s", event.name, event.subject_id, moved, extra=context)
