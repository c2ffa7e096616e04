"""Zombie runs: runs that are not finished but that nothing moves forward any more.

Leases catch a runner that dies while it holds a job; they cannot catch a job nobody claims
(no runner online, or none with room), a run paused and forgotten, or a gate without a timeout
that nobody looks at. Those show up here: a run is stuck when it is not finished, nothing about
it changed for longer than the limit, and no runner is heartbeating one of its jobs. The
reason says what it waits for, so a person can decide to cancel it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from core.duration import format_duration
from core.model import RunState
from core.states import RUN_TERMINAL, GateStatus, JobStatus, RunStatus


@dataclass(frozen=True, slots=True)
class Stuck:
    state: RunState
    #: when the run last changed (its latest event)
    since: datetime
    reason: str


def diagnose(state: RunState, last_change: datetime, now: datetime, limit_s: float) -> Stuck | None:
    """Is the run stuck as of ``now``? ``None`` when it finished, changed within the limit, is
    being worked on (a live lease), or waits at a gate whose own timeout is still to come."""
    run = state.run
    if run.status in RUN_TERMINAL or now - last_change < timedelta(seconds=limit_s):
        return None
    if any(j.status is JobStatus.RUNNING and (j.lease_expires_at or now) > now for j in state.jobs):
        return None  # a runner heartbeats it: slow is not stuck
    idle = format_duration((now - last_change).total_seconds())
    gate = next((g for g in state.gates if g.status is GateStatus.OPEN), None)
    queued = next((j for j in state.jobs if j.status is JobStatus.QUEUED), None)
    if run.status is RunStatus.PAUSED:
        reason = f"paused for {idle}" + (f" ({run.reason})" if run.reason else "")
    elif gate is not None:
        if gate.deadline is not None and gate.deadline > now:
            return None  # the gate's timeout will settle it
        what = "approval" if gate.kind == "manual" else "its check to pass"
        reason = f"waiting {idle} for {what} at {gate.stage_name}, with no timeout"
    elif queued is not None:
        stage = state.stages[queued.stage_index].name
        reason = f"job {stage}/{queued.name} queued for {idle}: no runner has claimed it"
    elif run.status is RunStatus.QUEUED:
        reason = f"queued for {idle}"
    else:
        reason = f"no progress for {idle}"
    return Stuck(state, last_change, reason)
