"""A runner claims queued jobs under a lease and executes them.

The protocol, which remote ``shipyard runner`` agents will speak over HTTP, is ``RunnerLink``:
claim jobs (each claim carries an attempt number, the fencing token), renew leases while
jobs run (a job whose lease cannot be renewed was taken away: kill it), append log chunks
and report results, both fenced by the attempt. ``LocalLink`` is the in-process link that
the built-in runner of ``shipyard serve`` uses.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

from core.assignment import Assignment
from core.commands import CompleteJob, ExpireLease, InterruptJob, ReportLateResult
from core.engine import Decision
from core.errors import DatabaseUnreachable
from core.runtime.attendance import Attendance
from core.runtime.executor import ExecResult, Executor, kill_orphans
from core.runtime.health import log_trouble
from core.runtime.orchestrator import Orchestrator
from core.runtime.records import JobRecords, Recorded
from core.runtime.waiting import idle_wait, wait_event
from core.runtime.workspaces import SWEEP_EVERY_S, Workspaces
from core.secrets import Masker

log = logging.getLogger(__name__)
T = TypeVar("T")
#: said in a job's log when its end was found in its record after the server restarted
RESTARTED_NOTE = "\n[shipyard: the server restarted after this job ended; its last output may be missing]\n"
RunnerReport = CompleteJob | InterruptJob | ExpireLease | ReportLateResult
#: output waiting to be stored, in bytes, past which a job's pipes are no longer read
HIGH_WATER = 4 * 1024 * 1024


class RunnerLink(Protocol):
    #: whether the server wakes the runner when jobs are made ready (in process); a runner over
    #: HTTP long-polls its claims instead
    woken: bool

    async def claim(self, runner: str, limit: int, lease_s: float) -> list[Assignment]: ...
    async def renew(self, runner: str, held: Sequence[tuple[str, int]], lease_s: float) -> set[str]: ...
    async def append_log(
        self, job_id: str, attempt: int, runner: str, chunks: list[tuple[str, str]]
    ) -> bool: ...
    async def report(self, command: RunnerReport) -> Decision: ...
    async def held(self, runner: str) -> list[tuple[str, str, int]]: ...
    async def still_held(
        self, runner: str, held: Sequence[tuple[str, int]], wait_s: float = 0.0
    ) -> set[str]: ...
    async def runs_over(self, runner: str, run_ids: Sequence[str]) -> set[str]: ...


#: an assignment as its runner gets it: its secrets decrypted (``storage.secrets.open_assignment``)
Opener = Callable[[Assignment], Assignment]
#: a job's report with its environment's secrets masked (``storage.secrets.mask_report``)
Masks = Callable[[CompleteJob], CompleteJob]


class LocalLink:
    """The runner protocol inside the server process. Claimed assignments carry their secrets
    encrypted; ``opener`` decrypts them here, as the runner takes them (a remote link will do
    so on the server, just before it sends the assignment over TLS)."""

    def __init__(
        self,
        orchestrator: Orchestrator,
        opener: Opener | None = None,
        *,
        labels: Sequence[str] = (),
        attendance: Attendance | None = None,
        capacity: int = 0,
        masks: Masks | None = None,
    ) -> None:
        self.orch = orchestrator
        self.service = orchestrator.service
        self.opener = opener
        #: the runner's labels (``core.labels``): it is handed only jobs that need no others
        self.labels = tuple(labels)
        #: where the runner is recorded as it claims, so it is listed like a remote one
        self.attendance = attendance
        self.capacity = capacity
        self.masks = masks
        self.woken = True  # (``Orchestrator._after_commit`` and ``jobs_ready``)

    async def claim(self, runner: str, limit: int, lease_s: float) -> list[Assignment]:
        if self.attendance is not None:
            await self.attendance.claiming(
                runner, labels=self.labels, version="builtin", capacity=self.capacity, lease_s=lease_s
            )
        claimed = await self.orch.claim(runner, limit, lease_s, self.labels)
        if self.opener is None:
            return [replace(a, sealed={}) if a.sealed else a for a in claimed]
        return [self.opener(a) if a.sealed else a for a in claimed]

    async def renew(self, runner: str, held: Sequence[tuple[str, int]], lease_s: float) -> set[str]:
        return await self.orch.db(self.service.renew_leases, runner, held, lease_s)

    async def append_log(self, job_id: str, attempt: int, runner: str, chunks: list[tuple[str, str]]) -> bool:
        return await self.orch.db(self.service.store.append_log, job_id, attempt, runner, chunks)

    async def report(self, command: RunnerReport) -> Decision:
        if (
            self.masks is not None
            and isinstance(command, CompleteJob)
            and (command.outputs or command.detail)
        ):
            # (only then: a trip that does not reach the database would end an outage it is in)
            command = await self.orch.db(self.masks, command)
        return await self.orch.handle(command)

    async def held(self, runner: str) -> list[tuple[str, str, int]]:
        return await self.orch.db(self.service.jobs_held_by, runner)

    async def still_held(self, runner: str, held: Sequence[tuple[str, int]], wait_s: float = 0.0) -> set[str]:
        """Answers at once: the built-in runner is told of stops in process (the orchestrator's
        ``_after_commit``), so it does not wait here (``Runner.watch_s`` is 0)."""
        return await self.orch.db(self.service.still_held, runner, held)

    async def runs_over(self, runner: str, run_ids: Sequence[str]) -> set[str]:
        return await self.orch.db(self.service.runs_over, run_ids)


class LogBuffer:
    """Output of one job attempt on its way to the store: flushed in chunks, bounded in size.

    The first ``limit`` bytes are kept as they come; after that only the last ``tail``
    characters are, behind a marker saying how much was left out. What waits to be stored is
    bounded too: past ``high_water`` bytes the buffer is full (``executor.PacedSink``), the
    job's pipes are not read until a flush takes it, and the flusher is asked to flush now."""

    def __init__(
        self, limit: int, tail: int = 65536, masker: Masker | None = None, high_water: int = HIGH_WATER
    ) -> None:
        self.limit = limit
        #: secret values become ``***`` before anything is kept (``core.secrets``)
        self.masker = masker or Masker()
        self.tail_limit = tail
        self.high_water = high_water
        self.pending: list[tuple[str, str]] = []
        self.pending_bytes = 0
        self.kept = 0
        self.omitted = 0
        self.tail: deque[tuple[str, str]] = deque()
        self.tail_size = 0
        #: set when a flush should not wait for its interval (the buffer is full)
        self.flush_soon = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    def __call__(self, stream: str, text: str) -> None:
        self.add(stream, text)

    def add(self, stream: str, text: str) -> None:
        self._keep(stream, self.masker.feed(stream, text))

    def is_full(self) -> bool:
        return self.pending_bytes >= self.high_water

    async def room(self) -> None:
        await self._room.wait()

    def put_back(self, chunks: list[tuple[str, str]]) -> None:
        """Chunks a flush could not store, first in line for the next one."""
        self.pending[:0] = chunks
        self._pending_changed(sum(len(t.encode()) for _, t in chunks))

    def _keep(self, stream: str, text: str) -> None:
        if not text:
            return
        room = self.limit - self.kept
        if room > 0:
            head = text.encode()[:room].decode(errors="ignore")  # the limit is in bytes
            text = text[len(head) :]
            self.pending.append((stream, head))
            size = len(head.encode())
            self.kept += size
            self._pending_changed(size)
        if not text:
            return
        self.tail.append((stream, text))
        self.tail_size += len(text)
        while self.tail_size > self.tail_limit:
            first_stream, first = self.tail[0]
            excess = self.tail_size - self.tail_limit
            if len(first) <= excess:
                self.tail.popleft()
                cut = len(first)
            else:
                self.tail[0] = (first_stream, first[excess:])
                cut = excess
            self.tail_size -= cut
            self.omitted += cut

    def take(self, final: bool = False) -> list[tuple[str, str]]:
        if final:
            for stream, text in self.masker.flush():
                self._keep(stream, text)
        chunks, self.pending = self.pending, []
        self._pending_changed(-self.pending_bytes)
        if final and self.tail:
            if self.omitted:
                chunks.append(("system", f"\n[shipyard: {self.omitted} characters of output omitted]\n"))
            chunks.extend(self.tail)
            self.tail.clear()
        return chunks

    def _pending_changed(self, by: int) -> None:
        self.pending_bytes += by
        if self.is_full():
            self._room.clear()
            self.flush_soon.set()
        else:
            self._room.set()


@dataclass
class _Active:
    assignment: Assignment
    task: asyncio.Task[Any] | None = None
    #: the engine no longer wants this attempt (canceled, fenced out): do not report it
    stopping: bool = False
    logs: LogBuffer = field(default_factory=lambda: LogBuffer(1 << 20))
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    #: its process has ended and only the report is on its way: the slot is free again
    reporting: bool = False


class Runner:
    def __init__(
        self,
        link: RunnerLink,
        executor: Executor,
        *,
        name: str,
        workdir: Path,
        capacity: int = 4,
        lease_s: float = 30.0,
        poll_interval: float = 1.0,
        log_flush_s: float = 0.5,
        max_log_bytes: int = 1 << 20,
        kill_grace_s: float = 5.0,
        watch_s: float = 0.0,
        sweep_every_s: float = SWEEP_EVERY_S,
    ) -> None:
        self.link = link
        self.executor = executor
        self.name = name
        self.workdir = workdir
        self.records = JobRecords(workdir, name)
        #: the runs' workspaces, removed once their runs are over (every ``sweep_every_s``)
        self.workspaces = Workspaces(workdir)
        self.sweep_every_s = sweep_every_s
        self.capacity = capacity
        self.lease_s = lease_s
        self.poll_interval = poll_interval
        self.log_flush_s = log_flush_s
        self.max_log_bytes = max_log_bytes
        self.kill_grace_s = kill_grace_s
        #: a remote runner's lease check waits on the server up to this long for one of its
        #: attempts to be taken away (a long poll: a cancel reaches it at once); 0: it asks
        #: every ``poll_interval``
        self.watch_s = watch_s
        #: set when this runner starts jobs: a long poll in flight asks again, with them
        self._started = asyncio.Event()
        #: by (job id, attempt): an old attempt still reporting and its retry can both be here
        self.jobs: dict[tuple[str, int], _Active] = {}
        #: stop requests for attempts this runner has not started yet (a claim was in flight)
        self._stop_early: set[tuple[str, int]] = set()
        self._wake = asyncio.Event()
        self._claimer: asyncio.Task[Any] | None = None
        #: the lease watcher and the workspace sweeper: they end when the runner does
        self._background: list[asyncio.Task[Any]] = []
        self._closing = False

    @property
    def active(self) -> bool:
        return bool(self.jobs)

    async def start(self) -> None:
        await self.recover()
        self._claimer = asyncio.create_task(self._claim_loop(), name=f"runner-{self.name}")
        watch = self._watch_long_loop() if self.watch_s > 0 else self._watch_loop()
        self._background = [
            asyncio.create_task(watch, name=f"runner-{self.name}-leases"),
            asyncio.create_task(
                self.workspaces.sweep_every(self.sweep_every_s, self._runs_over, self._busy_runs),
                name=f"runner-{self.name}-workspaces",
            ),
        ]

    async def recover(self) -> int:
        """What this runner held before its server restarted: a job whose end was recorded
        (``Executor.finished``) is reported as it ended, not run again; the others died with
        the server (leftovers are killed) and are reported lost. Recorded ends of attempts
        declared lost meanwhile (another replica expired the lease) are reported late, so the
        run says that the attempt finished and its retry ran as well."""
        held = await self.link.held(self.name)
        ended = {(r.job_id, r.attempt): r for r in self.records.found()}
        kill_orphans(job_id for _, job_id, _ in held)
        for run_id, job_id, attempt in held:
            finished = ended.pop((job_id, attempt), None)
            if finished is not None:
                await self._report_recorded(finished)
                continue
            log.warning(
                "run %s job %s attempt %d declared lost: runner %s restarted while it ran",
                run_id,
                job_id,
                attempt,
                self.name,
            )
            await self.link.report(ExpireLease(run_id=run_id, job_id=job_id, attempt=attempt, force=True))
        for late in ended.values():
            await self._report_late(late)
        return len(held)

    async def _report_recorded(self, r: Recorded) -> None:
        log.warning(
            "run %s job %s attempt %d finished (exit %d) before runner %s restarted; reporting it",
            r.run_id,
            r.job_id,
            r.attempt,
            r.exit_code,
            self.name,
        )
        ended = self.executor.ended(r.path, r.exit_code)
        await self.link.append_log(r.job_id, r.attempt, self.name, [("system", RESTARTED_NOTE)])
        await self.link.report(
            CompleteJob(
                run_id=r.run_id,
                job_id=r.job_id,
                attempt=r.attempt,
                runner=self.name,
                outcome=r.outcome,
                exit_code=r.exit_code,
                outputs=ended.outputs,
                detail="; ".join(x for x in (ended.detail, "reported after its server restarted") if x),
            )
        )
        self.records.forget(r.run_id, r.job_id, r.attempt, r.exit_code)

    async def _report_late(self, r: Recorded) -> None:
        late = ReportLateResult(
            run_id=r.run_id,
            job_id=r.job_id,
            attempt=r.attempt,
            runner=self.name,
            outcome=r.outcome,
            exit_code=r.exit_code,
        )
        if (await self.link.report(late)).accepted:
            log.warning(
                "late result: run %s job %s attempt %d, declared lost, had finished (exit %d) on runner %s; "
                "its retry ran as well",
                r.run_id,
                r.job_id,
                r.attempt,
                r.exit_code,
                self.name,
            )
        self.records.forget(r.run_id, r.job_id, r.attempt, r.exit_code)

    async def shutdown(self) -> None:
        """Stop claiming (letting a claim in flight finish, so nothing it took is orphaned),
        stop the running jobs gracefully and hand them back to the queue. Jobs that already
        finished are reported as finished."""
        self._closing = True
        self._wake.set()
        if self._claimer is not None:
            await asyncio.gather(self._claimer, return_exceptions=True)
        for active in list(self.jobs.values()):
            a = active.assignment
            self.executor.kill(a.job_id, a.attempt, grace_s=self.kill_grace_s)
        await asyncio.gather(*(a.task for a in self.jobs.values() if a.task), return_exceptions=True)
        await self._stop_background()

    async def drain(self) -> None:
        """Claim nothing new and let the running jobs finish (a remote runner's SIGTERM): each
        is reported as it ends, then the runner stops."""
        self._closing = True
        self._wake.set()
        if self._claimer is not None:
            await asyncio.gather(self._claimer, return_exceptions=True)
        await asyncio.gather(*(a.task for a in list(self.jobs.values()) if a.task), return_exceptions=True)
        await self._stop_background()

    async def _stop_background(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background = []

    def wake(self) -> None:
        self._wake.set()

    async def sweep_workspaces(self) -> int:
        """Remove the workspaces of runs that are over (none of a run this runner still runs a
        job of); returns how many went."""
        return await self.workspaces.sweep(self._runs_over, self._busy_runs)

    async def _runs_over(self, run_ids: list[str]) -> set[str]:
        return await self.link.runs_over(self.name, run_ids)

    def _busy_runs(self) -> set[str]:
        return {active.assignment.run_id for active in self.jobs.values()}

    def stop_jobs(self, attempts: Sequence[tuple[str, int]]) -> None:
        """Kill attempts the engine no longer wants (the run was canceled, a sibling failed),
        including ones whose claim is still on its way to this runner."""
        for key in attempts:
            active = self.jobs.get(key)
            if active is not None:
                active.stopping = True
                self.executor.kill(*key)
            else:  # perhaps a claim of ours still on its way; remember a bounded number
                self._stop_early.add(key)
                if len(self._stop_early) > 10_000:
                    self._stop_early.pop()

    async def run_once(self) -> int:
        """Claim what fits and start it; returns the number of jobs started."""
        free = self.capacity - self._busy()
        if free <= 0 or self._closing:
            return 0
        assignments = await self.link.claim(self.name, free, self.lease_s)
        for assignment in assignments:
            masker = Masker(assignment.masked)
            active = _Active(assignment, logs=LogBuffer(self.max_log_bytes, masker=masker))
            key = (assignment.job_id, assignment.attempt)
            self.jobs[key] = active
            if key in self._stop_early or self._closing:
                self._stop_early.discard(key)
                active.stopping = not self._closing
                self.executor.kill(*key)
            active.task = asyncio.create_task(self._execute(active), name=f"job-{assignment.label}")
        if assignments:
            self._started.set()
        return len(assignments)

    def _busy(self) -> int:
        """Slots taken: jobs whose process has not ended yet."""
        return sum(not a.reporting for a in self.jobs.values())

    async def _claim_loop(self) -> None:
        while not self._closing:
            try:
                started = await self.run_once()
            except DatabaseUnreachable:  # (said once by the orchestrator's ``health``)
                log.debug("runner %s: no claims while the database is unreachable", self.name)
                started = 0
            except Exception:
                log.exception("runner %s could not claim jobs", self.name)
                started = 0
            if started and self._busy() < self.capacity:
                continue
            # with nothing claimed and nothing running, a woken runner rests until a job is made
            # ready (a wake), looking now and then for what another process readied without one
            resting = self.link.woken and not started and not self.jobs
            rest = idle_wait(self.poll_interval) if resting else self.poll_interval
            await wait_event(self._wake, rest)
            self._wake.clear()

    async def _watch_loop(self) -> None:
        """Every poll: kill attempts that are no longer ours (canceled from another process,
        reclaimed). Every third of the lease: renew the leases of the rest."""
        renewed = asyncio.get_running_loop().time()
        while True:
            if not any(not a.stopping for a in self.jobs.values()):
                self._started.clear()  # (nothing to watch: until jobs start)
                await self._started.wait()
            await asyncio.sleep(self.poll_interval)
            held = [key for key, a in self.jobs.items() if not a.stopping]
            if not held:
                continue
            now = asyncio.get_running_loop().time()
            renew = now - renewed >= self.lease_s / 3
            try:
                if renew:
                    kept = await self.link.renew(self.name, held, self.lease_s)
                    renewed = now
                else:
                    kept = await self.link.still_held(self.name, held)
            except Exception as exc:
                log_trouble(log, exc, "runner %s could not check its leases; trying again", self.name)
                continue
            self.stop_jobs([(job_id, attempt) for job_id, attempt in held if job_id not in kept])

    async def _watch_long_loop(self) -> None:
        """Renew the leases every third of the lease; in between, wait on the server (a long
        poll) for an attempt to be taken away, and kill it as soon as it is. Jobs started
        meanwhile end the wait, so the next one watches them too."""
        loop = asyncio.get_running_loop()
        renewed = loop.time()
        while True:
            held = [key for key, a in self.jobs.items() if not a.stopping]
            self._started.clear()
            if not held:
                await wait_event(self._started, self.poll_interval)
                continue
            renew_in = renewed + self.lease_s / 3 - loop.time()
            try:
                if renew_in <= 0:
                    renewed = loop.time()
                    kept: set[str] | None = await self.link.renew(self.name, held, self.lease_s)
                else:
                    kept = await self._watch(held, min(renew_in, self.watch_s))
            except Exception as exc:
                log_trouble(log, exc, "runner %s could not check its leases; trying again", self.name)
                await asyncio.sleep(self.poll_interval)
                continue
            if kept is not None:
                self.stop_jobs([(job_id, attempt) for job_id, attempt in held if job_id not in kept])

    async def _watch(self, held: list[tuple[str, int]], wait_s: float) -> set[str] | None:
        """The attempts of ``held`` still ours, once one is not or after ``wait_s``; None when
        this runner started jobs meanwhile (ask again, with them)."""
        asking = asyncio.ensure_future(self.link.still_held(self.name, held, wait_s))
        started = asyncio.ensure_future(self._started.wait())
        try:
            await asyncio.wait((asking, started), return_when=asyncio.FIRST_COMPLETED)
        finally:
            started.cancel()
            if not asking.done():
                asking.cancel()
            await asyncio.gather(asking, started, return_exceptions=True)
        return asking.result() if not asking.cancelled() else None

    async def _execute(self, active: _Active) -> None:
        a = active.assignment
        flusher: list[asyncio.Task[None]] = []
        # jobs that end within a flush interval never need a flusher
        start_flusher = asyncio.get_running_loop().call_later(
            self.log_flush_s, lambda: flusher.append(asyncio.create_task(self._flush_periodically(active)))
        )
        try:
            if a.notice:
                active.logs.add("system", a.notice)
            if a.refusal:  # (its secrets cannot be decrypted: it must not run without them)
                active.logs.add("system", f"shipyard: this job was not started: {a.refusal}\n")
                result = ExecResult("failed", None, detail=a.refusal)
            else:
                record = self.records.path(a.run_id, a.job_id, a.attempt)
                result = await self.executor.execute(a, self.workspaces.of(a.run_id), active.logs, record)
                result = _masked(result, active.logs.masker)
        except Exception as exc:
            log.exception("job %s could not be executed", a.label)
            active.logs.add("system", f"shipyard: the runner failed to execute this job: {exc}\n")
            result = ExecResult("failed", None, detail=f"runner error: {exc}")
        finally:
            start_flusher.cancel()
            active.finished.set()
            active.logs.flush_soon.set()
            await asyncio.gather(*flusher, return_exceptions=True)  # lets a flush in progress land
        try:
            remaining = active.logs.take(final=True)
            if remaining:
                try:
                    await self._persist(  # through an outage; any other failure loses it
                        f"the last output of {a.label}",
                        lambda: self.link.append_log(a.job_id, a.attempt, self.name, remaining),
                        only_outages=True,
                    )
                except Exception:  # lost output must not cost the result
                    log.warning(
                        "runner %s could not store the last output of %s", self.name, a.label, exc_info=True
                    )
            if active.stopping:
                self.records.forget(a.run_id, a.job_id, a.attempt)
                return  # the engine already moved this attempt on; a report would be refused
            if result.outcome == "killed":
                if self._closing:
                    await self._report(
                        InterruptJob(run_id=a.run_id, job_id=a.job_id, attempt=a.attempt, runner=self.name)
                    )
                self.records.forget(a.run_id, a.job_id, a.attempt)
                return
            # claim for the freed slot now: the claim rides in the same group commit as this
            # report and sees the jobs it queues (the next stage), instead of a commit later
            active.reporting = True
            self.wake()
            await self._report(
                CompleteJob(
                    run_id=a.run_id,
                    job_id=a.job_id,
                    attempt=a.attempt,
                    runner=self.name,
                    outcome=result.outcome,
                    exit_code=result.exit_code,
                    outputs=result.outputs,
                    detail=result.detail,
                )
            )
            # (until here a restart finds the record and reports it; a crash between the
            # commit and this line makes that report a refused duplicate, nothing more)
            self.records.forget(a.run_id, a.job_id, a.attempt, result.exit_code)
        except Exception:
            log.exception("runner %s could not report job %s; its lease will expire", self.name, a.label)
        finally:
            self.jobs.pop((a.job_id, a.attempt), None)
            self.wake()

    async def _report(self, command: RunnerReport) -> Decision:
        """Report a result, riding out database trouble. The job stays in ``self.jobs`` meanwhile,
        so its lease keeps being renewed and nobody declares it lost."""
        return await self._persist(f"reporting {command.job_id}", lambda: self.link.report(command))

    async def _persist(self, what: str, call: Callable[[], Awaitable[T]], only_outages: bool = False) -> T:
        """``call`` until it goes through, waiting longer after each failure (up to 5 s); with
        ``only_outages``, only while the database is unreachable. While shutting down, give up
        after a few tries: the lease then expires and the job is retried."""
        delay = 0.2
        attempt = 0
        while True:
            attempt += 1
            try:
                return await call()
            except Exception as exc:
                outage = isinstance(exc, DatabaseUnreachable)
                if (self._closing and attempt >= 5) or (only_outages and not outage):
                    raise
                if outage:  # (said once by ``health``)
                    log.debug("runner %s: %s waits for the database (try %d)", self.name, what, attempt)
                else:
                    log.warning(
                        "runner %s: %s failed (try %d); retrying in %.1fs",
                        self.name,
                        what,
                        attempt,
                        delay,
                        exc_info=attempt == 1,
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _flush_periodically(self, active: _Active) -> None:
        """Store output every ``log_flush_s`` while the job runs (started once it has run that long)."""
        a = active.assignment
        while not active.finished.is_set():
            active.logs.flush_soon.clear()
            chunks = active.logs.take()
            if chunks:
                try:
                    held = await self.link.append_log(a.job_id, a.attempt, self.name, chunks)
                except Exception as exc:
                    log_trouble(log, exc, "runner %s could not store output of %s", self.name, a.label)
                    active.logs.put_back(chunks)  # for the next flush
                else:
                    if not held:  # fenced out: someone else owns this attempt now
                        active.stopping = True
                        self.executor.kill(a.job_id, a.attempt)
                        return
            await wait_event(active.logs.flush_soon, self.log_flush_s)


def _masked(result: ExecResult, masker: Masker) -> ExecResult:
    """``result`` with secret values masked in its outputs (they are stored, shown in the run
    and passed on to later stages) and its detail."""
    if not masker:
        return result
    outputs = {key: masker.mask(value) for key, value in result.outputs.items()}
    return replace(result, outputs=outputs, detail=masker.mask(result.detail))
