"""Who may do what: principals, roles, and the separation-of-duties rules.

A principal is anyone who acts: a person in Slack, a CI system holding an API token, the
owner of a schedule. All of them get the same rules, whichever door they come through.

Roles and group memberships are *grants* with a validity interval, so the question "could
this principal approve when the gate opened?" has an answer that later edits cannot change:
who may clear a waiting gate is fixed at the moment it opened.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from core.errors import Forbidden
from core.model import Gate, Run


class Role(StrEnum):
    VIEWER = "viewer"
    DEPLOYER = "deployer"
    APPROVER = "approver"
    ADMIN = "admin"


class Action(StrEnum):
    READ = "read"  #: see pipelines, runs, logs, environments
    TRIGGER = "trigger"  #: start runs
    CONTROL = "control"  #: cancel, pause, resume, retry (deployers: their own runs)
    APPROVE = "approve"  #: approve or reject gates
    MANAGE = "manage"  #: pipeline definitions, tokens, the audit log


ALLOWED: dict[Role, frozenset[Action]] = {
    Role.VIEWER: frozenset({Action.READ}),
    Role.DEPLOYER: frozenset({Action.READ, Action.TRIGGER, Action.CONTROL}),
    Role.APPROVER: frozenset({Action.READ, Action.APPROVE}),
    Role.ADMIN: frozenset(Action),
}


@dataclass(frozen=True, slots=True)
class Grant:
    """A role (``kind="role"``) or group membership (``kind="group"``) held for a while."""

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

    @classmethod
    def from_grants(cls, name: str, grants: Iterable[Grant], at: datetime) -> Principal:
        """What ``name`` held at ``at``: its own roles, its groups, and the roles its groups
        held then (a Slack user group mapped to a role gives that role to its members)."""
        grants = list(grants)
        own = [g for g in grants if g.principal == name and g.held_at(at)]
        groups = frozenset(g.value for g in own if g.kind == "group")
        roles = {Role(g.value) for g in own if g.kind == "role"}
        roles.update(
            Role(g.value) for g in grants if g.principal in groups and g.kind == "role" and g.held_at(at)
        )
        return cls(name, frozenset(roles), groups)

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
    approvers, be one of them by name, group or role. Self-approval is the engine's rule
    (``core.engine``), so it holds on every channel, trusted ones included."""
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
