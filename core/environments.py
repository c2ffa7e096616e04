"""Environments: the promotion path and the protection rules every deployment to them obeys.

Environments are declared in the service's configuration (``SHIPYARD_CONFIG``), not in
pipeline files, so a pipeline author cannot edit the rules away. ``environments`` is a mapping
whose order is the promotion path: here ``staging → production``::

    environments:
      staging: {}                      # or just `staging:`; every rule has a default
      production:
        confirm: true                  # /deploy asks its author first
        approvals: {from: [release-managers, role:approver, U024BE7LH], count: 2}
        pipelines: [web, "api-*"]      # glob patterns of pipelines that may deploy here
        branches: [main, "release/*"]  # glob patterns of the source branches allowed
        freezes:                       # see core/freeze.py
          - {every: "0 16 * * 5", until: "0 8 * * 1", timezone: Europe/Berlin, reason: weekend}
          - {from: "2026-12-24T00:00", to: "2026-12-27T00:00", timezone: Europe/Berlin, reason: holidays}
        on_freeze: wait                # or fail: a run meeting a freeze waits for it to end
        concurrency: supersede         # or fifo: a newer run cancels older queued ones
        rollback_skips_approvals: true
        requires_previous: true        # promote only what succeeded in staging first
        break_glass_review: 24h        # how long the follow-up review of a break-glass may wait
        lock_reminder: 15m             # remind a lock's holder this long before it expires
        runner_labels: [prod-eu]       # its deploy jobs run only on runners with these labels
        checks:                        # health and verification: see core/checks.py
          smoke: {http: {url: "http://127.0.0.1:8080/healthz", status: 200}, interval: 30s}
        health: [smoke]                # watched all the time
        health_settle: 1m              # post a health change once it held this long (0s: at once)
        verify: {checks: [smoke], for: 10m, failure_limit: 2, on_failure: rollback}
        routers:                       # canary and blue/green traffic: see core/routing.py
          web: {haproxy: {socket: /run/haproxy/admin.sock, backend: web}, stable: [web1], canary: [web2]}

An environment a stage names but the configuration does not declare gets the default policy
and stands outside the promotion path. Approvers (``from``) are principals or Slack users
(``U…``/``W…``), Slack user groups (``S…``) or group names, and roles as ``role:<role>``.
Glob patterns use ``fnmatch`` rules (``*`` also matches ``/``), case-sensitive.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, RootModel, field_validator, model_validator

from core.access import Role
from core.checks import EnvironmentChecks
from core.definition import NAME, Delay, Duration, Labels, _Strict
from core.freeze import Freeze
from core.routing import EnvironmentRouters

_ROLE_PREFIX = "role:"


class ApprovalRule(_Strict):
    """How many people, and which, must approve a deployment before it runs."""

    #: principals, Slack users (U…/W…), user groups (S… or a name), roles (role:approver)
    approvers: list[str] = Field(alias="from", min_length=1)
    count: int = Field(default=1, ge=1, le=20)
    #: may the person who started the run approve it? (separation of duties says no)
    allow_self_approval: bool = False

    @field_validator("approvers")
    @classmethod
    def _who(cls, value: list[str]) -> list[str]:
        known = ", ".join(f"{_ROLE_PREFIX}{r}" for r in Role)
        for who in value:
            if not who.strip() or who != who.strip() or " " in who:
                raise ValueError(f"{who!r} is not a name: use a user, a group or role:<role>")
            if who.startswith(_ROLE_PREFIX) and who.removeprefix(_ROLE_PREFIX) not in set(Role):
                raise ValueError(f"{who!r} is not a role (roles: {known})")
        if len(set(value)) != len(value):
            raise ValueError("an approver is named twice")
        return value

    @property
    def gate_approvers(self) -> tuple[str, ...]:
        """The names a gate matches callers against (``core.access``): a principal, one of
        its groups or one of its roles; ``role:`` is dropped since roles match by value."""
        return tuple(who.removeprefix(_ROLE_PREFIX) for who in self.approvers)


class EnvironmentPolicy(EnvironmentChecks, EnvironmentRouters):
    """What holds for every deployment to one environment, whichever pipeline asks (its checks,
    health and verification: ``core/checks.py``; its traffic routers: ``core/routing.py``)."""

    #: a /deploy that would deploy here asks its author to confirm first
    confirm: bool = False
    approvals: ApprovalRule | None = None
    #: glob patterns of the pipelines that may deploy here; empty: all
    pipelines: list[str] = Field(default_factory=list)
    #: glob patterns of the source branches that may be deployed here; empty: all
    branches: list[str] = Field(default_factory=list)
    freezes: list[Freeze] = Field(default_factory=list)
    #: a run that meets a freeze waits for it to end, or fails at once
    on_freeze: Literal["wait", "fail"] = "wait"
    #: queued runs go in arrival order, or a newer run cancels the older queued ones
    concurrency: Literal["fifo", "supersede"] = "fifo"
    rollback_skips_approvals: bool = False
    #: an artifact must have succeeded in the previous environment on the path first
    requires_previous: bool = True
    #: how long the follow-up review of a break-glass deployment may wait
    break_glass_review: Duration = 24 * 3600.0
    #: remind a lock's holder this long before the lock expires
    lock_reminder: Duration = 15 * 60.0
    #: a health change is posted once it held this long (flapping within it posts nothing;
    #: ``0s``: every change at once)
    health_settle: Delay = 60.0
    #: where its health changes are posted: a channel ID (C0123ABCD) or name (#deploys-prod);
    #: none: the default channel (``slack_channel`` of the service)
    slack_channel: str | None = None
    #: labels every runner of its deploy jobs must carry, added to what the pipeline asks for
    #: (``core.labels``): production deploys run only on production runners
    runner_labels: Labels = Field(default_factory=list)

    @field_validator("pipelines", "branches")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if not pattern.strip() or pattern != pattern.strip():
                raise ValueError(f"{pattern!r}: a pattern cannot be empty or start or end with spaces")
        return value

    @field_validator("slack_channel")
    @classmethod
    def _slack_channel(cls, value: str | None) -> str | None:
        if value is None or re.fullmatch(r"[CGD][A-Z0-9]{2,20}|#[a-z0-9_-]{1,80}", value):
            return value
        raise ValueError(
            f"{value!r} is not a Slack channel: give its ID (C0123ABCD) or its name (#deploys-prod: "
            "lowercase letters, digits, '-' and '_')"
        )


def _environment_name(name: str) -> str:
    if not re.fullmatch(NAME, name):
        raise ValueError(
            f"{name!r} is not an environment name: use lowercase letters, digits and '-', "
            "starting with a letter or digit"
        )
    return name


EnvironmentName = Annotated[str, AfterValidator(_environment_name)]


class Environments(RootModel[dict[EnvironmentName, EnvironmentPolicy]]):
    """The configured environments; their order is the promotion path."""

    model_config = ConfigDict(frozen=True)

    root: dict[EnvironmentName, EnvironmentPolicy] = Field(default_factory=dict)

    @field_validator("root", mode="before")
    @classmethod
    def _empty_is_default(cls, value: Any) -> Any:
        """``environments:`` and ``staging:`` with nothing after them are YAML nulls."""
        if value is None:
            return {}
        if isinstance(value, dict):
            return {name: {} if policy is None else policy for name, policy in value.items()}
        return value

    @model_validator(mode="after")
    def _one_router_per_target(self) -> Environments:
        """Two routers may not drive one nginx include or one haproxy backend: each is leased
        and driven on its own, so two rollouts (one per environment) would overwrite each
        other's weights."""
        seen: dict[str, str] = {}
        for env, policy in self.root.items():
            for name, router in policy.routers.items():
                if router.nginx is not None:
                    target = f"the nginx include {router.nginx.include}"
                elif router.haproxy is not None:
                    target = f"haproxy backend {router.haproxy.backend} at {router.haproxy.socket}"
                else:
                    continue  # (what a command drives is its own affair)
                where = f"{env}.routers.{name}"
                if target in seen:
                    raise ValueError(
                        f"{seen[target]} and {where} both drive {target}: two rollouts at once would "
                        "overwrite each other's weights; give each router its own"
                    )
                seen[target] = where
        return self

    @property
    def path(self) -> list[str]:
        """The promotion path, first environment first."""
        return list(self.root)

    def __contains__(self, name: object) -> bool:
        return name in self.root

    def policy(self, name: str) -> EnvironmentPolicy:
        """The rules for ``name``; an environment nobody declared gets the defaults."""
        return self.root.get(name, _DEFAULT)

    def previous(self, name: str) -> str | None:
        """The environment before ``name`` on the path (None: first, or not on the path)."""
        path = self.path
        if name not in self.root or path[0] == name:
            return None
        return path[path.index(name) - 1]

    def required_previous(self, name: str) -> str | None:
        """Where an artifact must have succeeded before it may go to ``name``, if anywhere."""
        return self.previous(name) if self.policy(name).requires_previous else None


_DEFAULT = EnvironmentPolicy()


def pipeline_refusal(policy: EnvironmentPolicy, env: str, pipeline: str) -> str | None:
    """Why ``pipeline`` may not deploy to ``env``, or None if it may."""
    if not policy.pipelines or any(fnmatchcase(pipeline, p) for p in policy.pipelines):
        return None
    return f"pipeline {pipeline} may not deploy to {env} (allowed pipelines: {', '.join(policy.pipelines)})"


def branch_refusal(policy: EnvironmentPolicy, env: str, ref: str | None) -> str | None:
    """Why source ``ref`` may not be deployed to ``env``, or None if it may. ``refs/heads/``
    is ignored, so ``refs/heads/main`` is branch ``main``; no ref at all is refused when the
    environment names branches."""
    if not policy.branches:
        return None
    allowed = ", ".join(policy.branches)
    if not ref:
        return f"{env} only takes deployments from branches {allowed}, and this run names no branch"
    branch = ref.removeprefix("refs/heads/")
    if any(fnmatchcase(branch, p) for p in policy.branches):
        return None
    return f"branch {branch} may not be deployed to {env} (allowed branches: {allowed})"
