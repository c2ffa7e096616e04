"""What a run's thread says: which event of the run's log becomes which thread post, decided
once for the Slack notifier and the console, so both tell the same things with the same blocks.

``posts_for(state, event)`` decides: from the run as it is now and one of its events, the posts
that event calls for. Each post has a ``key`` naming it once per run, so whoever posts it can
claim it by that key and never say it twice, however often the event is handled (a retry, a
restart, a second replica)::

    a manual gate opened        gate:<gate>          the approval card (edited as it is decided)
    a job lost                  lost:<job>:<n>       what happened; Mark failed, Cancel run, Roll back
    a job failed (any attempt)  job:<job>:<n>        its last log lines; Cancel run while the run
                                                     goes on, Retry / Ignore once it has failed
    the run finished            result               the result, with Roll back buttons
      a rollback succeeded      rollback-lock        its environment stays locked: Acknowledge

``render(state, post, shown)`` draws a post. What it shows that the run does not hold (the log
tail, what is live beside a gate, the artifact, the lock) is read by the caller and handed over
as ``Shown`` (``bot.chat.cards.compose`` reads it), so both functions are pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from bot.chat import block_kit, lock_blocks
from core.analysis import EnvironmentHealth
from core.events import Event
from core.locks import Lock
from core.model import Gate, Job, RunState
from core.ports import Deployment
from core.states import JOB_FAILURES, RUN_TERMINAL, JobStatus, RunStatus

FAILED = frozenset(str(s) for s in JOB_FAILURES)
FINISHED = frozenset(str(s) for s in RUN_TERMINAL)


@dataclass(frozen=True, slots=True)
class GateCard:
    """A manual gate waits for people: the card they approve or reject it on."""

    gate: Gate

    @property
    def key(self) -> str:
        return f"gate:{self.gate.id}"


@dataclass(frozen=True, slots=True)
class JobFailed:
    """An attempt of a job failed (``status``: failed, timed out …), whether or not the run goes on."""

    job: Job
    attempt: int
    status: str
    reason: str | None

    @property
    def key(self) -> str:
        return f"job:{self.job.id}:{self.attempt}"


@dataclass(frozen=True, slots=True)
class LateResult:
    """An attempt declared lost had finished after all: it and its retry both ran."""

    job: Job
    attempt: int
    outcome: str
    exit_code: int | None

    @property
    def key(self) -> str:
        return f"late:{self.job.id}:{self.attempt}"


@dataclass(frozen=True, slots=True)
class JobLost:
    """A runner stopped heartbeating an attempt of a job."""

    job: Job
    attempt: int
    reason: str

    @property
    def key(self) -> str:
        return f"lost:{self.job.id}:{self.attempt}"


@dataclass(frozen=True, slots=True)
class RunFinished:
    key = "result"


@dataclass(frozen=True, slots=True)
class RollbackLocked:
    """A rollback succeeded: its environment is locked until someone acknowledges it (told
    only when the lock is still there, ``Shown.lock``)."""

    environment: str
    key = "rollback-lock"


ThreadPost = GateCard | JobFailed | JobLost | LateResult | RunFinished | RollbackLocked


@dataclass(frozen=True, slots=True)
class Shown:
    """What a post shows that the run does not hold, read by whoever posts it."""

    #: now (a lock is told relative to it)
    at: datetime
    #: a gate card: what is live in its environment beside this run, and the artifact it deploys
    live: Deployment | None = None
    artifact: str | None = None
    #: role -> Slack user groups, to mention a gate's approvers
    groups: Mapping[str, Sequence[str]] = field(default_factory=dict)
    #: a failed job: its last log lines
    tail: Sequence[str] = ()
    #: a succeeded rollback: its environment's lock now
    lock: Lock | None = None
    #: a gate card: the run's page in the web view (when the public address is known)
    link: str | None = None
    #: a gate card: its environment's health now (when it watches health checks)
    health: EnvironmentHealth | None = None


def posts_for(state: RunState, event: Event) -> list[ThreadPost]:
    """The thread posts ``event`` calls for, in the order they are told."""
    if event.subject == "gate" and event.to_status == "open":
        gate = next((g for g in state.gates if g.id == event.subject_id), None)
        return [GateCard(gate)] if gate is not None and gate.kind == "manual" else []
    if event.name == "job.late_result":
        job = state.job(event.subject_id)
        code = event.data.get("exit_code")
        exit_code = None if code is None else int(str(code))
        attempt, outcome = int(str(event.data["attempt"])), str(event.data["outcome"])
        return [] if job is None else [LateResult(job, attempt, outcome, exit_code)]
    if event.subject == "job" and (event.to_status == JobStatus.LOST or event.to_status in FAILED):
        job = state.job(event.subject_id)
        if job is None:
            return []
        attempt = int(str(event.data.get("attempt", job.attempt)))
        if event.to_status == JobStatus.LOST:
            return [JobLost(job, attempt, str(event.data.get("reason", "")))]
        why = event.data.get("reason")
        return [JobFailed(job, attempt, str(event.to_status), None if why is None else str(why))]
    if event.subject == "run" and event.to_status in FINISHED:
        posts: list[ThreadPost] = [RunFinished()]
        if state.run.kind == "rollback" and event.to_status == RunStatus.SUCCEEDED:
            env = next(
                (s.environment for s in state.stages if s.environment and s.status == "succeeded"), None
            )
            if env is not None:
                posts.append(RollbackLocked(env))
        return posts
    return []


def render(state: RunState, post: ThreadPost, shown: Shown) -> tuple[str, list[block_kit.Block]] | None:
    """The post's text and blocks; None when it has nothing to say any more (a rollback's lock
    that is gone)."""
    match post:
        case GateCard(gate=gate):
            return block_kit.gate_card(
                state,
                gate,
                shown.live,
                artifact=shown.artifact,
                groups=shown.groups,
                health=shown.health,
                link=shown.link,
            )
        case JobFailed(job=job, attempt=attempt, status=status, reason=reason):
            summary, blocks = block_kit.job_failed(state, job, list(shown.tail), attempt, status, reason)
            return summary, blocks + block_kit.settle_failure(state)
        case JobLost(job=job, attempt=attempt, reason=reason):
            return block_kit.job_lost(state, job, attempt, reason)
        case LateResult(job=job, attempt=attempt, outcome=outcome, exit_code=code):
            return block_kit.late_result(state, job, attempt, outcome, code)
        case RunFinished():
            return block_kit.run_finished(state)
        case RollbackLocked():
            lock = shown.lock
            if lock is None or lock.kind != "rollback" or lock.environment != post.environment:
                return None
            return lock_blocks.rollback_locked(lock, shown.at)
