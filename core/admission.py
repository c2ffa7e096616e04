"""Admission: may a run's deploy stage start in its environment now?

At most one deployment runs per environment at a time; the others wait in ``queued``, in
arrival order. A lock held by a person and a freeze window also keep runs waiting (a freeze
can be configured to fail them instead, and break glass pushes through freezes). The engine
asks this when a deploy stage is next. What it may consult is read beforehand: ``engine.needs``
names the environments a command may take a run into, the service reads their
``EnvironmentView``s into one ``Known`` inside the command's transaction, and the database's
unique index on running deploy stages settles any race.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from core.model import Run


@dataclass(frozen=True, slots=True)
class EnvironmentView:
    """What stands between a run and one environment right now."""

    name: str
    #: the ref of another run whose deploy stage is running there
    busy_with: str | None = None
    #: the first run waiting in its queue (id and ref), if any
    queue_head: str | None = None
    queue_head_ref: str | None = None
    #: who holds its lock, since when and why (``core.locks.describe``), if it is locked
    lock: str | None = None
    #: "frozen until … (reason)" while a freeze window is in force
    freeze: str | None = None
    freeze_fails: bool = False
    #: the run's own artifact was marked bad after it was triggered: it must not deploy it
    bad_artifact: str | None = None
    #: the environment's ``verify``: how long a deployment is verified (None: it is not), and
    #: whether a failed verification rolls back
    verify_for: float | None = None
    verify_rollback: bool = False
    #: each router's pools: the one serving now, then the idle one (blue/green's colours)
    router_pools: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    #: the environment's approval rule (who may promote a rollout past an open-ended pause)
    approvers: tuple[str, ...] = ()
    min_approvals: int = 1
    allow_self_approval: bool = False
    #: "production is unhealthy since 12:03: …" while it is unhealthy and declares
    #: ``block_when_unhealthy``
    unhealthy: str | None = None


class NotRead(LookupError):
    """The decision reached an environment that was not read before deciding (``engine.needs``
    left it out): a bug, refused loudly rather than admitting blind."""


@dataclass(frozen=True, slots=True)
class Known:
    """Everything a decision may consult beyond the run itself, read before deciding: plain
    values, so deciding cannot reach the database."""

    #: what stands between the run and each environment it may enter next
    views: tuple[EnvironmentView, ...] = ()

    def view(self, env: str) -> EnvironmentView:
        found = next((v for v in self.views if v.name == env), None)
        if found is None:
            raise NotRead(f"{env} was not read before deciding")
        return found


@dataclass(frozen=True, slots=True)
class QueueEntry:
    run_id: str
    ref: str
    position: int
    #: when it should start, from how long recent deployments there took (None: no history)
    eta: datetime | None


@dataclass(frozen=True, slots=True)
class Queue:
    environment: str
    #: (id, ref) of the run deploying there now
    running: tuple[str, str] | None
    running_since: datetime | None
    waiting: list[QueueEntry]
    #: how long a deployment there usually takes, in seconds
    typical_s: float | None


def estimate_start(
    position: int, typical_s: float | None, running_since: datetime | None, now: datetime
) -> datetime | None:
    """The ``position``-th in the queue starts after what runs now and those ahead of it."""
    if typical_s is None:
        return None
    left = max(0.0, typical_s - (now - running_since).total_seconds()) if running_since else 0.0
    return now + timedelta(seconds=left + (position - 1) * typical_s)


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Literal["admit", "wait", "fail"]
    reason: str = ""


def admit(view: EnvironmentView | None, run: Run) -> Verdict:
    """The rules in order: a freeze (unless break glass), a lock, an unhealthy environment that
    blocks (unless a rollback or break glass), a deployment already running, runs ahead in the
    queue. The reason names the first thing in the way."""
    if view is None:
        return Verdict("admit")
    env = view.name
    if view.bad_artifact:
        return Verdict("fail", view.bad_artifact)
    if view.freeze and run.break_glass is None:
        if view.freeze_fails:
            return Verdict("fail", f"{env} is frozen: {view.freeze}")
        return Verdict("wait", f"waiting for {env}: {view.freeze}")
    if view.lock:
        return Verdict("wait", f"waiting for {env}: {view.lock}")
    if view.unhealthy and run.kind != "rollback" and run.break_glass is None:
        # (a rollback is how an unhealthy environment gets fixed)
        return Verdict("wait", f"waiting for {env}: {view.unhealthy}")
    if view.busy_with:
        return Verdict("wait", f"waiting for {env}: {view.busy_with} is deploying there")
    if view.queue_head not in (None, run.id) and not _passes_queue(view, run):
        return Verdict("wait", f"waiting for {env}: {view.queue_head_ref} is ahead in the queue")
    return Verdict("admit")


def _passes_queue(view: EnvironmentView, run: Run) -> bool:
    """Runs ahead that wait out a freeze do not hold back one that breaks the glass, nor do
    those waiting for an unhealthy environment hold back a rollback (which may fix it)."""
    if view.freeze and run.break_glass is not None:
        return True
    return bool(view.unhealthy) and (run.kind == "rollback" or run.break_glass is not None)
