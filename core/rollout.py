"""A stage's rollout: traffic moved to a new version step by step through a router.

The stage's jobs put the new version on the router's ``canary`` servers; the rollout then
takes the canary's steps (``core.definition.CanaryDef``): ``set_weight`` records the weights it
wants (``desired``) before anything touches the router, and goes on only once the router's
driver (``core.runtime.rollouts``) has set them and read back what the router really applies
(``applied``); a timed ``pause`` waits until ``step_until``; an open-ended one waits for a
person (a gate: approvers and separation of duties); an ``analysis`` measures checks until
``step_until`` (``core.analysis``). After the last step the ``promote`` jobs put the new version
on the stable servers and all traffic returns to stable. An abort (a failed analysis, a person,
a canceled run) returns all traffic to stable first, then runs the ``abort`` jobs, then ends
the run.

Everything a rollout is lives in this value, stored with its stage: a restart (or another
replica) reads the recorded desired weights, sets the router to them, and goes on; a pause
keeps its deadline. A paused run moves no traffic: its analysis keeps measuring, and one that
passes meanwhile is kept (``passed_while_paused``) until the run resumes; one that fails still
aborts (traffic back to stable protects users, paused or not). Pure: the engine
(``core.engine``) moves it, with ``core.states``' table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any

from core.checks import VerifyPolicy
from core.definition import AnalysisStepDef, CanaryStepDef, StrategyDef
from core.duration import format_duration
from core.states import RolloutStatus, check

STABLE, CANARY = "stable", "canary"
#: all traffic on the stable servers: where a canary starts and where an abort returns
ALL_STABLE: Mapping[str, int] = {STABLE: 100, CANARY: 0}
#: rollout statuses after which the router is not driven any more
ROLLOUT_DONE = frozenset({RolloutStatus.PROMOTED, RolloutStatus.ABORTED, RolloutStatus.FAILED})


def describe_weights(weights: Mapping[str, int] | None) -> str:
    """``stable 90 / canary 10``."""
    if weights is None:
        return "not confirmed yet"
    return " / ".join(f"{pool} {weight}" for pool, weight in weights.items())


@dataclass(frozen=True, slots=True)
class Rollout:
    """Where a stage's rollout stands (stored as JSON on the stage)."""

    router: str
    #: ``canary`` or ``blue_green``
    kind: str = "canary"
    #: the router's pools: the one serving now (``stable``, or the live colour), then the one
    #: the new version goes on (``canary``, or the idle colour)
    pools: tuple[str, str] = (STABLE, CANARY)
    status: RolloutStatus = RolloutStatus.PENDING
    #: the step being taken (0-based; ``len(steps)`` once they are all done)
    step: int = -1
    #: the weights the rollout wants, recorded before the router is touched
    desired: Mapping[str, int] = field(default_factory=lambda: dict(ALL_STABLE))
    #: what the router confirmed last (read back after setting); None: never confirmed
    applied: Mapping[str, int] | None = None
    step_started_at: datetime | None = None
    #: when a timed pause or an analysis step ends
    step_until: datetime | None = None
    #: the run was paused during a timed step: the seconds that step had left
    paused_left: float | None = None
    #: the step's analysis passed while the run was paused: the next step starts on resume
    #: (a paused run moves no traffic)
    passed_while_paused: bool = False
    #: the analysis measuring the current step (``core.analysis``), if it is one
    analysis: str | None = None
    #: blue/green, once switched: when the scale-down jobs retire the old colour
    retire_at: datetime | None = None
    #: how the run ends once an abort has put traffic back: ``failed`` or ``canceled``
    outcome: str = ""
    #: why it waits, aborted or failed (with the measured values)
    reason: str = ""
    #: a resumed rollout whose router does not answer yet: what the driver waits for ("" when
    #: it does not wait)
    router_wait: str = ""
    #: who may promote past an open-ended pause (the environment's approval rule when the
    #: stage started, unless the pause names its own), and whether the run's author may
    approvers: tuple[str, ...] = ()
    min_approvals: int = 1
    allow_self_approval: bool = False

    @property
    def router_pending(self) -> bool:
        """The router must still be set to ``desired`` (and read back) before it goes on."""
        return self.status not in ROLLOUT_DONE and dict(self.desired) != dict(self.applied or {})

    @property
    def canary_weight(self) -> int:
        """The new version's share of the traffic wanted now."""
        return int(self.desired.get(self.pools[1], 0))

    def weights(self, weight: int) -> dict[str, int]:
        """The router's weights for the new version taking ``weight`` percent of the traffic."""
        return {self.pools[0]: 100 - weight, self.pools[1]: weight}

    @property
    def at_rest(self) -> dict[str, int]:
        """All traffic where it was before the rollout: where an abort returns."""
        return self.weights(0)

    @property
    def final(self) -> dict[str, int]:
        """Where traffic ends once promoted: back on stable (now the new version) for a canary,
        on the new colour for blue/green."""
        return self.weights(0 if self.kind == "canary" else 100)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = str(self.status)
        data["approvers"] = list(self.approvers)
        data["pools"] = list(self.pools)
        for key in ("step_started_at", "step_until", "retire_at"):
            value = getattr(self, key)
            data[key] = value.isoformat() if value is not None else None
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Rollout:
        values = dict(data)
        values["status"] = RolloutStatus(values["status"])
        values["approvers"] = tuple(values.get("approvers") or ())
        values["pools"] = tuple(values.get("pools") or (STABLE, CANARY))
        for key in ("step_started_at", "step_until", "retire_at"):
            if values.get(key) is not None:
                values[key] = datetime.fromisoformat(values[key])
        return cls(**values)


def moved(rollout: Rollout, to: RolloutStatus, ident: str, **values: Any) -> Rollout:
    """``rollout`` in status ``to``, checked against the rollout's transition table."""
    check("rollout", ident, rollout.status, to)
    return replace(rollout, status=to, **values)


def step_words(strategy: StrategyDef, index: int) -> str:
    """``step 3 of 6: analysis of error-rate for 5m``."""
    steps = strategy.steps
    if index >= len(steps):
        return "promoting"
    return f"step {index + 1} of {len(steps)}: {describe_step(steps[index], strategy.kind)}"


def describe_step(step: CanaryStepDef, kind: str = "canary") -> str:
    if step.set_weight is not None:
        if kind == "blue_green":
            return "switch all traffic to the new colour"
        return f"set the canary's weight to {step.set_weight}%"
    if step.pause is not None:
        if step.pause.duration is None:
            return "pause until a person promotes"
        return f"pause for {format_duration(step.pause.duration)}"
    assert step.analysis is not None
    checks = ", ".join(step.analysis.checks)
    return f"analysis of {checks} for {format_duration(step.analysis.duration)}"


def analysis_id(run_id: str, stage_index: int, step: int) -> str:
    """The analysis measuring one canary step (one per step: a restart finds it again)."""
    return f"rollout:{run_id}:{stage_index}:{step}"


def step_policy(step: AnalysisStepDef) -> VerifyPolicy:
    """A canary step's analysis as the verification policy ``core.analysis.verdict`` judges."""
    return VerifyPolicy.model_validate(
        {
            "checks": list(step.checks),
            "for": step.duration,
            "initial_delay": step.initial_delay,
            "failure_limit": step.failure_limit,
            "inconclusive_limit": step.inconclusive_limit,
            "consecutive_error_limit": step.consecutive_error_limit,
        }
    )
