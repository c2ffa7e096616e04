"""A runner claims queued jobs under a lease and executes them.

The protocol, which remote ``shipyard runner`` agents will speak over HTTP, is ``RunnerLink``:
claim jobs (each claim carries an attempt number, the fencing token), renew leases while
jobs run (a job whose lease cannot be renewed was taken away: kill it), append log chunks
and report results, both fenced by the attempt. ``LocalLink`` is the in-process link that
the built-in runner of ``shipyard serve`` uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from core.assignment import Assignment
from core.commands import CompleteJob, ExpireLease, InterruptJob
from core.engine import Decision
from core.executor import ExecResult, Executor, kill_orphans
from core.orchestrator import Orchestrator

log = logging.getLogger(__name__)
RunnerReport = CompleteJob | InterruptJob | ExpireLease


class RunnerLink(Protocol):
    async def claim(self, runner: str, limit: int, lease_s: float) -> list[Assignment]: ...
    async def renew(self, runner: str, held: Sequence[tuple[str, int]], lease_s: float) -> set[str]: ...
    async def append_log(
        self, job_id: str, attempt: int, runner: str, chunks: list[tuple[str, str]]
    ) -> bool: ...
    async def report(self, command: RunnerReport) -> Decision: ...
    async def held(self, runner: str) -> list[tuple[str, str, int]]: ...


class LocalLink:
    """The runner protocol inside the server process."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orch = orchestrator
        self.service = orchestrator.service

    async def claim(self, runner: str, limit: int, lease_s: float) -> list[Assignment]:
        return await self.orch.db(self.service.claim_jobs, runner, limit, lease_s)

    async def renew(self, runner: str, held: Sequence[tuple[str, int]], lease_s: float) -> set[str]:
        return await self.orch.db(self.service.renew_leases, runner, held, lease_s)

    async def append_log(self, job_id: str, attempt: int, runner: str, chunks: list[tuple[str, str]]) -> bool:
        return await self.orch.db(self.service.store.append_log, job_id, attempt, runner, chunks)

    async def report(self, command: RunnerReport) -> Decision:
        return await self.orch.handle(command)

    async def held(self, runner: str) -> list[tuple[str, str, int]]:
        return await self.orch.db(self.service.jobs_held_by, runner)


class LogBuffer:
    """Output of one job attempt on its way to the store: flushed in chunks, bounded in size.

    The first ``limit`` characters are kept as they come; after that only the last ``tail``
    characters are, behind a marker saying how much was left out."""

    def __init__(self, limit: int, tail: int = 65536) -> None:
        self.limit = limit
        self.tail_limit = tail
        self.pending: list[tuple[str, str]] = []
        self.kept = 0
        self.omitted = 0
        self.tail: deque[tuple[str, str]] = deque()
        self.tail_size = 0

    def add(self, stream: str, text: str) -> None:
        room = self.limit - self.kept
        if room > 0:
            head, text = text[:room], text[room:]
            self.pending.append((stream, head))
            self.kept += len(head)
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
        chunks, self.pending = self.pending, []
        if final and self.tail:
            if self.omitted:
                chunks.append(("system", f"\n[shipyard: {self.omitted} characters of output omitted]\n"))
            chunks.extend(self.tail)
            self.tail.clear()
        return chunks


@dataclass
class _Active:
    assignment: Assignment
    task: asyncio.Task[Any] | None = None
    stopping: bool = False
    logs: LogBuffer = field(default_factory=lambda: LogBuffer(1 << 20))


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
        log_flush_s: float = 1.0,
        max_log_bytes: int = 1 << 20,
    ) -> None:
        self.link = link
        self.executor = executor
        self.name = name
        self.workdir = workdir
        self.capacity = capacity
        self.lease_s = lease_s
        self.poll_interval = poll_interval
        self.log_flush_s = log_flush_s
        self.max_log_bytes = max_log_bytes
        self.jobs: dict[str, _Active] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._closing = False

    @property
    def active(self) -> bool:
        return bool(self.jobs)

    async def start(self) -> None:
        await self.recover()
        self._tasks = [
            asyncio.create_task(self._claim_loop(), name=f"runner-{self.name}"),
            asyncio.create_task(self._heartbeat_loop(), name=f"runner-{self.name}-heartbeat"),
        ]

    async def recover(self) -> int:
        """Jobs this runner held before a crash died with it: kill leftovers, report them lost."""
        held = await self.link.held(self.name)
        kill_orphans(job_id for _, job_id, _ in held)
        for run_id, job_id, attempt in held:
            await self.link.report(ExpireLease(run_id=run_id, job_id=job_id, attempt=attempt, force=True))
        return len(held)

    async def shutdown(self) -> None:
        """Stop claiming, stop running jobs and hand them back to the queue."""
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for active in list(self.jobs.values()):
            active.stopping = True
            self.executor.kill(active.assignment.job_id, active.assignment.attempt)
        await asyncio.gather(*(a.task for a in self.jobs.values() if a.task), return_exceptions=True)

    def wake(self) -> None:
        self._wake.set()

    def stop_jobs(self, job_ids: Sequence[str]) -> None:
        """Kill jobs the engine no longer wants (the run was canceled, a sibling failed)."""
        for job_id in job_ids:
            active = self.jobs.get(job_id)
            if active is not None:
                active.stopping = True
                self.executor.kill(job_id, active.assignment.attempt)

    async def run_once(self) -> int:
        """Claim what fits and start it; returns the number of jobs started."""
        free = self.capacity - len(self.jobs)
        if free <= 0 or self._closing:
            return 0
        assignments = await self.link.claim(self.name, free, self.lease_s)
        for assignment in assignments:
            active = _Active(assignment, logs=LogBuffer(self.max_log_bytes))
            self.jobs[assignment.job_id] = active
            active.task = asyncio.create_task(self._execute(active), name=f"job-{assignment.label}")
        return len(assignments)

    async def _claim_loop(self) -> None:
        while True:
            try:
                started = await self.run_once()
            except Exception:
                log.exception("runner %s could not claim jobs", self.name)
                started = 0
            if started and len(self.jobs) < self.capacity:
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            except TimeoutError:
                pass
            self._wake.clear()

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            held = [(a.assignment.job_id, a.assignment.attempt) for a in self.jobs.values()]
            if not held:
                continue
            try:
                kept = await self.link.renew(self.name, held, self.lease_s)
            except Exception:
                log.exception("runner %s could not renew leases", self.name)
                continue
            self.stop_jobs([job_id for job_id, _ in held if job_id not in kept])

    async def _execute(self, active: _Active) -> None:
        a = active.assignment
        flusher = asyncio.create_task(self._flush_periodically(active))
        try:
            result = await self.executor.execute(a, self.workdir / a.run_id, active.logs.add)
        except Exception as exc:
            log.exception("job %s could not be executed", a.label)
            active.logs.add("system", f"shipyard: the runner failed to execute this job: {exc}\n")
            result = ExecResult("failed", None, detail=f"runner error: {exc}")
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        try:
            remaining = active.logs.take(final=True)
            if remaining:
                await self.link.append_log(a.job_id, a.attempt, self.name, remaining)
            if result.outcome == "killed" or active.stopping:
                if self._closing:
                    await self._report(
                        InterruptJob(run_id=a.run_id, job_id=a.job_id, attempt=a.attempt, runner=self.name)
                    )
                return
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
        except Exception:
            log.exception("runner %s could not report job %s; its lease will expire", self.name, a.label)
        finally:
            self.jobs.pop(a.job_id, None)
            self.wake()

    async def _report(self, command: RunnerReport, tries: int = 5) -> Decision:
        """Report a result, riding out brief database trouble; past that the lease expires."""
        for attempt in range(1, tries + 1):
            try:
                return await self.link.report(command)
            except Exception:
                if attempt == tries:
                    raise
                log.warning(
                    "runner %s: report of %s failed (try %d), retrying", self.name, command.job_id, attempt
                )
                await asyncio.sleep(0.2 * attempt)
        raise AssertionError("unreachable")

    async def _flush_periodically(self, active: _Active) -> None:
        a = active.assignment
        while True:
            await asyncio.sleep(self.log_flush_s)
            chunks = active.logs.take()
            if chunks and not await self.link.append_log(a.job_id, a.attempt, self.name, chunks):
                active.stopping = True  # fenced out: someone else owns this attempt now
                self.executor.kill(a.job_id, a.attempt)
                return
