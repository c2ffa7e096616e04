"""Who may do what: principals, roles, and the separation-of-duties rules.

A principal is anyone who acts: a person in Slack, a CI system holding an API token, the
owner of a schedule. All of them get the same rules, whichever door they come through.

Roles and group memberships are *grants* with a validity interval, so the question "could
this principal approve when the gate opened?" has an answer that later edits cannot change:
who may clear a waiting gate is fixed at the moment it opened.

``authorize`` is the one place a command's access is decided: every door (REST, Slack, the
console, the CLI, the scheduler, webhooks) puts the principal it resolved on the command's
``Actor``, and ``Service.handle`` calls ``authorize`` before the engine decides. The rules:

==========================  ========================================================
command                     who may
==========================  ========================================================
TriggerRun                  trigger (deployer, admin); break glass: admin only
Cancel/Fail/Pause/Resume    control: a deployer their own runs, an admin any
RetryRun                    control, as above
RetryRun(ignore_failure)    approve (approver, admin) and control, on every door
ApproveGate, RejectGate     the approver role held when the gate opened, one of the gate's
                            approvers if it names some (authenticated doors); never whoever
                            triggered or asked for the run, unless the gate allows it (all)
==========================  ========================================================

A viewer holds only ``read``, so every command above is refused to them. A door that
resolves no principal (the CLI with database access, the system, runners, schedules and
webhooks, which act as their owner) is trusted with the role rules; the gate rules hold there
too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Final

from core.commands import (
    AbortRollout,
    ApproveGate,
    CancelRun,
    Command,
    EndVerification,
    FailRun,
    PauseRun,
    PromoteRollout,
    RejectGate,
    ResumeRun,
    RetryRun,
    TriggerRun,
)
from core.errors import Forbidden
from core.model import Gate, Run, RunState
from core.states import GateStatus, RolloutStatus, StageStatus


class Role(StrEnum):
    VIEWER = "viewer"
    DEPLOYER = "deployer"
    APPROVER = "approver"
    ADMIN = "admin"
    #: a remote ``shipyard runner``: claims jobs and reports them, nothing else
    RUNNER = "runner"


class Action(StrEnum):
    READ = "read"  #: see pipelines, runs, logs, environments
    TRIGGER = "trigger"  #: start runs
    CONTROL = "control"  #: cancel, pause, resume, retry (deployers: their own runs)
    APPROVE = "approve"  #: approve or reject gates
    MANAGE = "manage"  #: pipeline definitions, tokens, the audit log
    RUN_JOBS = "run_jobs"  #: claim jobs, renew their leases, store their logs, report them


ALLOWED: dict[Role, frozenset[Action]] = {
    Role.VIEWER: frozenset({Action.READ}),
    Role.DEPLOYER: frozenset({Action.READ, Action.TRIGGER, Action.CONTROL}),
    Role.APPROVER: frozenset({Action.READ, Action.APPROVE}),
    #: (an admin runs no jobs: a runner acts only as itself, with a token of its own)
    Role.ADMIN: frozenset(Action) - {Action.RUN_JOBS},
    Role.RUNNER: frozenset({Action.RUN_JOBS}),
}


@dataclass(frozen=True, slots=True)
class Grant:
    """A role (``kind="role"``), a group membership (``kind="group"``) or a runner label
    (``kind="label"``: a runner acting as this principal may carry it) held for a while."""

    principal: str
    kind: str
    value: str
    granted_at: datetime
    revoked_at: datetime | None = None

    def held_at(self, at: datetime) -> bool:
        return self.granted_at <= at and (self.revoked_at is None or self.revoked_at > at)


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller and what it holds now."""

    name: str
    roles: frozenset[Role]
    groups: frozenset[str] = frozenset()
    #: the labels a runner acting as this principal may claim with: granted, never
    #: self-declared, since an environment's secrets go to runners by their labels
    labels: frozenset[str] = frozenset()

    @classmethod
    def from_grants(cls, name: str, grants: Iterable[Grant], at: datetime) -> Principal:
        """What ``name`` held at ``at``: its own roles, its groups, and the roles and groups
        its groups held then (a Slack user group mapped to a role gives that role to its
        members; one put in an access group such as ``release-managers`` puts them in it too)."""
        grants = list(grants)
        own = [g for g in grants if g.principal == name and g.held_at(at)]
        direct = {g.value for g in own if g.kind == "group"}
        groups = frozenset(
            direct
            | {g.value for g in grants if g.principal in direct and g.kind == "group" and g.held_at(at)}
        )
        held = own + [g for g in grants if g.principal in groups and g.held_at(at)]
        roles = frozenset(Role(g.value) for g in held if g.kind == "role")
        return cls(name, roles, groups, frozenset(g.value for g in held if g.kind == "label"))

    def ungranted(self, labels: Iterable[str]) -> list[str]:
        """The ``labels`` this principal may not carry as a runner (sorted)."""
        return sorted(set(labels) - self.labels)

    def may(self, action: Action) -> bool:
        return any(action in ALLOWED[role] for role in self.roles)

    def require(self, action: Action, run: Run | None = None) -> None:
        """Raise ``Forbidden`` unless this principal may take ``action`` (on ``run``)."""
        if not self.may(action):
            roles = ", ".join(sorted(self.roles)) or "no role"
            needed = ", ".join(sorted(r for r, acts in ALLOWED.items() if action in acts))
            raise Forbidden(f"{self.name} has {roles}; {action} needs one of: {needed}")
        if (
            action is Action.CONTROL
            and run is not None
            and Role.ADMIN not in self.roles
            and run.triggered_by != self.name
        ):
            raise Forbidden(
                f"{self.name} may only cancel, pause, resume or retry their own runs; "
                f"{run.ref} was triggered by {run.triggered_by}"
            )


def check_approver(name: str, grants: Iterable[Grant], gate: Gate, run: Run) -> None:
    """Raise ``Forbidden`` unless ``name`` could clear ``gate`` when it opened.

    The principal must have held the approver (or admin) role then, and if the gate names
    approvers, be one of them by name, group or role."""
    at = gate.opened_at or run.created_at
    then = Principal.from_grants(name, grants, at)
    if not then.may(Action.APPROVE):
        raise Forbidden(
            f"{name} did not hold the approver role when gate {gate.stage_name} of {run.ref} opened "
            f"({at:%Y-%m-%d %H:%M:%S} UTC); who may clear a gate is fixed when it opens"
        )
    if gate.approvers and not ({name} | then.groups | set(then.roles)) & set(gate.approvers):
        raise Forbidden(
            f"gate {gate.stage_name} of {run.ref} is cleared by {', '.join(gate.approvers)}; "
            f"{name} was not one of them when it opened"
        )


#: doors whose callers are authenticated principals: the gate's approver rule is checked for
#: them. The CLI runs with direct database access (an operator); the system and runners are
#: Shipyard itself.
AUTHENTICATED: Final = frozenset({"rest", "slack", "console", "web", "webhook", "schedule"})

#: the action each command needs of the principal its door resolved
NEEDS: Final[Mapping[type[Command], Action]] = {
    TriggerRun: Action.TRIGGER,
    CancelRun: Action.CONTROL,
    FailRun: Action.CONTROL,
    PauseRun: Action.CONTROL,
    ResumeRun: Action.CONTROL,
    RetryRun: Action.CONTROL,
    EndVerification: Action.APPROVE,
    PromoteRollout: Action.APPROVE,
    AbortRollout: Action.CONTROL,
}


def authorize(state: RunState | None, command: Command, grants: Iterable[Grant] = ()) -> None:
    """Raise ``Forbidden`` unless ``command.actor`` may apply ``command`` to ``state``.

    ``grants`` are the actor's grants over time, needed for gates only (who may clear one is
    fixed when it opened). Commands this table does not name pass: the engine decides them."""
    if isinstance(command, ApproveGate | RejectGate):
        if state is not None:
            _check_gate(state, command, grants)
        return
    if isinstance(command, PromoteRollout) and state is not None:
        _check_pause(state, command, grants)
    if isinstance(command, EndVerification) and command.verdict == "passed" and state is not None:
        if command.actor.channel != "system":  # (separation of duties holds on every channel)
            _check_not_own_release(state.run, command.actor.name)
    principal = command.actor.principal
    action = NEEDS.get(type(command))
    if principal is None or action is None:
        return
    if isinstance(command, AbortRollout) and principal.may(Action.APPROVE):
        return  # (approvers may stop anyone's canary: it only puts traffic back on stable)
    glass = isinstance(command, TriggerRun) and command.break_glass is not None
    if glass and not principal.may(Action.MANAGE):
        raise Forbidden("only admins may break the glass (push a run through freezes and required approvals)")
    if isinstance(command, RetryRun) and command.ignore_failure and not principal.may(Action.APPROVE):
        raise Forbidden("Ignoring a failure needs the approver role, like clearing a gate.")
    principal.require(action, state.run if state is not None and action is Action.CONTROL else None)


def _check_pause(state: RunState, command: PromoteRollout, grants: Iterable[Grant]) -> None:
    """An open-ended pause in a rollout is a gate: its approvers (the pause's own, else the
    environment's rule when the stage started) clear it, and separation of duties holds."""
    stage = next((s for s in state.stages if s.status is StageStatus.ROLLING_OUT), None)
    rollout = stage.rollout if stage is not None else None
    if stage is None or rollout is None or rollout.status is not RolloutStatus.WAITING:
        return  # (the engine says what is wrong)
    if command.step is not None and command.step != rollout.step:
        return  # (a promote of a step it left: the engine says it moved on, not who may promote this one)
    strategy = state.definition.stages[stage.index].strategy
    steps = strategy.steps if strategy is not None else []
    pause = steps[rollout.step].pause if 0 <= rollout.step < len(steps) else None
    own = pause if pause is not None and pause.approvers else None
    gate = Gate(
        id=f"{stage.id}.pause",
        run_id=state.run.id,
        stage_index=stage.index,
        stage_name=f"{stage.name} (canary pause)",
        kind="manual",
        approvers=tuple(a.removeprefix("role:") for a in own.approvers)
        if own is not None
        else rollout.approvers,
        min_approvals=1,
        allow_self_approval=own.allow_self_approval if own is not None else rollout.allow_self_approval,
        opened_at=rollout.step_started_at,
    )
    check_not_self_approval(state.run, gate, command.actor.name)
    if command.actor.channel in AUTHENTICATED:
        check_approver(command.actor.name, grants, gate, state.run)


def _check_not_own_release(run: Run, name: str) -> None:
    """Separation of duties: who triggered a run does not declare its release good."""
    if name in (run.requested_by or (run.triggered_by,)):
        raise Forbidden(
            f"{name} triggered {run.ref}: someone else must say its release looks good "
            "(separation of duties); you may still roll it back"
        )


def _check_gate(state: RunState, command: ApproveGate | RejectGate, grants: Iterable[Grant]) -> None:
    gate = state.find_gate(command.gate)
    if gate is None or gate.status is not GateStatus.OPEN or gate.kind != "manual":
        return  # the engine says what is wrong with the gate itself
    name = command.actor.name
    if isinstance(command, ApproveGate):
        check_not_self_approval(state.run, gate, name)
    if command.actor.channel in AUTHENTICATED:
        check_approver(name, grants, gate, state.run)


def check_not_self_approval(run: Run, gate: Gate, name: str) -> None:
    """Separation of duties: whoever triggered or asked for ``run`` (a retry's requesters
    included) may not approve its gate, unless the gate allows self-approval."""
    if name not in (run.requested_by or (run.triggered_by,)) or gate.allow_self_approval:
        return
    if name == run.triggered_by:
        how = f"triggered {run.ref}"
    elif run.retry_of is not None:
        how = f"asked for (an earlier run retried as) {run.ref}"
    else:
        how = f"asked for {run.ref} through {run.triggered_by}"
    raise Forbidden(
        f"{name} {how} and cannot approve its own gate {gate.stage_name} "
        "(separation of duties; the gate would need allow_self_approval: true)"
    )
