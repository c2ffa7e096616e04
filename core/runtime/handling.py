"""Handling one command inside a transaction: read what it needs, decide, write.

``handle`` finds the command's run, asks the one access policy (``core.access.authorize``),
then calls the command's handler: ``trigger`` and ``retry`` lay out a new run
(``core.runtime.starts``), every other command acts on an existing run (``on_run``). Each reads
what the engine will consult (``engine.needs`` → ``reading.known``), then calls the pure
``engine.decide`` (or ``engine.start``); the service writes the decision (``writes.write``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any, Final

from core import engine
from core.access import authorize
from core.artifacts import parse_artifact_output
from core.commands import (
    ApproveGate,
    Command,
    CompleteJob,
    MoveToFront,
    PromoteRollout,
    RejectGate,
    RetryRun,
    RunCommand,
    TriggerRun,
)
from core.engine import Decision
from core.environments import Environments
from core.errors import CommandRefused, Forbidden
from core.model import RunState
from core.ports import Tx
from core.runtime import starts
from core.runtime.reading import known
from core.states import JobStatus


def handle(tx: Tx, command: Command, now: datetime, environments: Environments) -> Decision:
    """Decide ``command`` in ``tx``: its run, the one access check whichever channel it came
    through, then its handler."""
    state = None
    if not isinstance(command, TriggerRun):
        state = tx.find_run(command.run_id)
        if state is None:
            return engine.reject(f"no run {command.run_id!r}", kind="not_found")
    try:
        gated = isinstance(command, ApproveGate | RejectGate | PromoteRollout)
        authorize(state, command, tx.grants_of(command.actor.name) if gated else ())
    except Forbidden as exc:
        return engine.reject(exc.message, state, exc.kind)
    return HANDLERS.get(type(command), on_run)(tx, state, command, now, environments)


def on_run(
    tx: Tx, state: RunState | None, command: RunCommand, now: datetime, environments: Environments
) -> Decision:
    """Any command on an existing run: complete what the command leaves to the database, read
    the environments it may enter, decide."""
    assert state is not None  # found by ``handle``
    if isinstance(command, MoveToFront) and command.before is None:
        command = replace(command, before=tx.queue_head_at(state))
    if isinstance(command, CompleteJob) and command.outcome == "succeeded" and "artifact" in command.outputs:
        command = _register_artifact(tx, state, command, now)
    return engine.decide(
        state, command, now, known(tx, environments, engine.needs(state, command), state.run.id, now)
    )


#: a command's handler: the transaction, the command's run (None for a trigger), the command
Handler = Callable[[Tx, Any, Any, datetime, Environments], Decision]

#: one handler per kind of command; every other command acts on an existing run (``on_run``)
HANDLERS: Final[Mapping[type[Command], Handler]] = {TriggerRun: starts.trigger, RetryRun: starts.retry}


def _register_artifact(tx: Tx, state: RunState, report: CompleteJob, now: datetime) -> CompleteJob:
    """A job that built an artifact registers it with its report; if the registry refuses
    it (a mutable version, a digest that differs from the one registered), the job fails
    saying why instead of deploying something that is not what it claims."""
    job = state.job(report.job_id)
    if job is None or job.status is not JobStatus.RUNNING or job.attempt != report.attempt:
        return report  # a stale report: the engine refuses it
    try:
        tx.register_artifact(parse_artifact_output(report.outputs["artifact"]), state.run, now)
    except CommandRefused as exc:
        return replace(report, outcome="failed", detail=f"artifact refused: {exc.message}")
    return report
