from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from core.access import Action, Grant, Principal, Role, authorize, check_approver
from core.commands import (
    ApproveGate,
    CancelRun,
    Command,
    FailRun,
    MoveToFront,
    PauseRun,
    RejectGate,
    ResumeRun,
    RetryRun,
    TriggerRun,
)
from core.definition import parse_pipeline
from core.errors import Forbidden
from core.model import Actor, Channel, Gate, Run, RunState, Stage
from core.states import GateStatus, RunStatus

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


RUN = Run(
    id="r1",
    number=7,
    pipeline="web",
    pipeline_version=1,
    version_id="v1",
    status=RunStatus.WAITING,
    parameters={},
    source_revision=None,
    triggered_by="alice",
    trigger_channel="slack",
    created_at=T0,
)


def gate(approvers: tuple[str, ...] = ("release-managers",), opened: int = 10) -> Gate:
    return Gate(
        id="r1.g1",
        run_id="r1",
        stage_index=1,
        stage_name="production",
        kind="manual",
        status=GateStatus.OPEN,
        approvers=approvers,
        opened_at=at(opened),
    )


def role(name: str, value: str, granted: int, revoked: int | None = None) -> Grant:
    return Grant(name, "role", value, at(granted), at(revoked) if revoked is not None else None)


def group(name: str, value: str, granted: int, revoked: int | None = None) -> Grant:
    return Grant(name, "group", value, at(granted), at(revoked) if revoked is not None else None)


@pytest.mark.parametrize(
    ("roles", "allowed"),
    [
        ({Role.VIEWER}, {Action.READ}),
        ({Role.DEPLOYER}, {Action.READ, Action.TRIGGER, Action.CONTROL}),
        ({Role.APPROVER}, {Action.READ, Action.APPROVE}),
        ({Role.ADMIN}, set(Action) - {Action.RUN_JOBS}),  # an admin runs no jobs
        ({Role.RUNNER}, {Action.RUN_JOBS}),  # and a runner does nothing else
        (set(), set()),
    ],
)
def test_each_role_allows_exactly_its_actions(roles: set[Role], allowed: set[Action]) -> None:
    p = Principal("p", frozenset(roles))
    assert {a for a in Action if p.may(a)} == allowed


def test_a_deployer_controls_only_their_own_runs_and_an_admin_any() -> None:
    Principal("alice", frozenset({Role.DEPLOYER})).require(Action.CONTROL, RUN)
    with pytest.raises(Forbidden, match="may only cancel, pause, resume or retry their own runs; web#7"):
        Principal("bob", frozenset({Role.DEPLOYER})).require(Action.CONTROL, RUN)
    Principal("root", frozenset({Role.ADMIN})).require(Action.CONTROL, RUN)


def test_a_refusal_names_what_the_caller_has_and_what_is_needed() -> None:
    with pytest.raises(Forbidden, match="carol has viewer; approve needs one of: admin, approver"):
        Principal("carol", frozenset({Role.VIEWER})).require(Action.APPROVE)


def test_an_approver_in_the_gates_group_when_it_opened_may_clear_it() -> None:
    grants = [role("bob", "approver", 0), group("bob", "release-managers", 0)]
    check_approver("bob", grants, gate(), RUN)


def test_a_slack_user_group_in_the_gates_group_puts_its_members_in_it_while_both_hold() -> None:
    """``U0DAVE`` is in the Slack user group ``S0ONCALL`` (an approver), which an admin put in
    release-managers: Dave clears a release-managers gate, as its card's mention promised."""
    grants = [group("U0DAVE", "S0ONCALL", 0), role("S0ONCALL", "approver", 0)]
    check_approver("U0DAVE", [*grants, group("S0ONCALL", "release-managers", 0)], gate(opened=10), RUN)
    later = [*grants, group("S0ONCALL", "release-managers", 15)]
    with pytest.raises(Forbidden, match="U0DAVE was not one of them when it opened"):
        check_approver("U0DAVE", later, gate(opened=10), RUN)


def test_being_named_by_the_gate_is_enough_without_a_group() -> None:
    check_approver("bob", [role("bob", "approver", 0)], gate(approvers=("bob",)), RUN)


def test_roles_granted_after_the_gate_opened_do_not_count() -> None:
    grants = [role("bob", "approver", 20), group("bob", "release-managers", 0)]
    with pytest.raises(
        Forbidden, match="did not hold the approver role when gate production of web#7 opened"
    ):
        check_approver("bob", grants, gate(opened=10), RUN)


def test_group_membership_gained_after_the_gate_opened_does_not_count() -> None:
    grants = [role("bob", "approver", 0), group("bob", "release-managers", 15)]
    with pytest.raises(
        Forbidden, match="cleared by release-managers; bob was not one of them when it opened"
    ):
        check_approver("bob", grants, gate(opened=10), RUN)


def test_a_role_revoked_after_the_gate_opened_still_clears_that_gate() -> None:
    grants = [role("bob", "approver", 0, revoked=15), group("bob", "release-managers", 0)]
    check_approver("bob", grants, gate(opened=10), RUN)
    later = gate(opened=20)
    with pytest.raises(Forbidden):
        check_approver("bob", grants, later, RUN)


def test_grants_of_another_principal_are_ignored() -> None:
    grants = [role("mallory", "admin", 0)]
    with pytest.raises(Forbidden):
        check_approver("bob", grants, gate(), RUN)


# -- authorize: the one policy every door goes through -------------------------------------------
PIPELINE = parse_pipeline("name: web\nstages:\n  - {name: production, jobs: [{name: go, run: x}]}\n")


def state(gate_: Gate | None = None, requested_by: tuple[str, ...] = ()) -> RunState:
    run = replace(RUN, requested_by=requested_by)
    stage = Stage(id="r1.s1", run_id="r1", index=1, name="production", environment=None)
    return RunState(run=run, stages=(stage,), jobs=(), gates=(gate_,) if gate_ else (), definition=PIPELINE)


def who(name: str, *roles: Role, channel: Channel = "rest") -> Actor:
    return Actor(name, channel, Principal(name, frozenset(roles)))


def trigger(a: Actor) -> Command:
    return TriggerRun(pipeline="web", actor=a)


def break_glass(a: Actor) -> Command:
    return TriggerRun(pipeline="web", actor=a, break_glass="the site is down")


def ignore_failure(a: Actor) -> Command:
    return RetryRun(run_id="r1", actor=a, ignore_failure=True)


ROLE_TABLE: list[tuple[Callable[[Actor], Command], tuple[Role, ...], str | None]] = [
    # (command, the caller's roles today, the refusal or None)
    (trigger, (Role.DEPLOYER,), None),
    (trigger, (Role.VIEWER,), "trigger needs one of: admin, deployer"),
    (trigger, (Role.APPROVER,), "trigger needs one of: admin, deployer"),
    (break_glass, (Role.DEPLOYER,), "only admins may break the glass"),
    (break_glass, (Role.ADMIN,), None),
    (lambda a: CancelRun(run_id="r1", actor=a), (Role.VIEWER,), "control needs one of: admin, deployer"),
    (lambda a: FailRun(run_id="r1", actor=a), (Role.APPROVER,), "control needs one of: admin, deployer"),
    (lambda a: PauseRun(run_id="r1", actor=a), (Role.ADMIN,), None),
    (lambda a: ResumeRun(run_id="r1", actor=a), (Role.ADMIN,), None),
    (lambda a: RetryRun(run_id="r1", actor=a), (Role.ADMIN,), None),
    (ignore_failure, (Role.DEPLOYER,), "Ignoring a failure needs the approver role"),
    (ignore_failure, (Role.APPROVER,), "control needs one of: admin, deployer"),
    (ignore_failure, (Role.ADMIN,), None),
    (lambda a: MoveToFront(run_id="r1", actor=a, reason="hotfix"), (Role.VIEWER,), None),  # not in the table
]


@pytest.mark.parametrize(("make", "roles", "refusal"), ROLE_TABLE)
def test_each_command_needs_its_role(
    make: Callable[[Actor], Command], roles: tuple[Role, ...], refusal: str | None
) -> None:
    command = make(who("root", *roles))
    if refusal is None:
        authorize(state(), command)
    else:
        with pytest.raises(Forbidden, match=refusal) as caught:
            authorize(state(), command)
        assert caught.value.kind == "forbidden"


def test_a_deployer_controls_their_own_run_and_no_one_elses() -> None:
    authorize(state(), CancelRun(run_id="r1", actor=who("alice", Role.DEPLOYER)))
    with pytest.raises(Forbidden, match="may only cancel, pause, resume or retry their own runs"):
        authorize(state(), RetryRun(run_id="r1", actor=who("bob", Role.DEPLOYER)))


def test_a_door_without_a_principal_is_trusted_with_the_role_rules() -> None:
    authorize(state(), CancelRun(run_id="r1", actor=Actor("bob", "cli")))
    authorize(None, TriggerRun(pipeline="web", actor=Actor("ops", "schedule"), break_glass="fire"))


APPROVER_THEN = [role("bob", "approver", 0), group("bob", "release-managers", 0)]


@pytest.mark.parametrize("channel", ["rest", "slack", "console", "cli"])
def test_whoever_triggered_or_asked_for_the_run_may_not_approve_it_on_any_door(channel: Channel) -> None:
    grants = [role("alice", "approver", 0), group("alice", "release-managers", 0)]
    approve = ApproveGate(run_id="r1", gate="production", actor=who("alice", Role.APPROVER, channel=channel))
    with pytest.raises(Forbidden, match="alice triggered web#7 and cannot approve its own gate production"):
        authorize(state(gate()), approve, grants)
    retried = state(gate(), requested_by=("dave", "alice"))
    asked = ApproveGate(run_id="r1", gate="production", actor=who("dave", Role.APPROVER, channel=channel))
    with pytest.raises(Forbidden, match="dave asked for web#7 through alice"):
        authorize(retried, asked, [role("dave", "approver", 0)])


def test_a_gate_that_allows_it_takes_the_triggerers_approval_and_anyone_may_reject() -> None:
    grants = [role("alice", "approver", 0), group("alice", "release-managers", 0)]
    approve = ApproveGate(run_id="r1", gate="production", actor=who("alice", Role.APPROVER))
    authorize(state(replace(gate(), allow_self_approval=True)), approve, grants)
    authorize(state(gate()), RejectGate(run_id="r1", gate="production", actor=approve.actor), grants)


def test_gates_are_cleared_by_what_was_held_when_they_opened() -> None:
    approve = ApproveGate(run_id="r1", gate="production", actor=who("bob"))  # no role today
    authorize(state(gate()), approve, APPROVER_THEN)
    with pytest.raises(Forbidden, match="did not hold the approver role"):
        authorize(state(gate()), replace(approve, actor=who("bob", Role.ADMIN)), [])
    with pytest.raises(Forbidden, match="cleared by release-managers"):
        authorize(state(gate()), approve, [role("bob", "approver", 0)])


def test_the_cli_operator_is_trusted_with_the_approver_role_but_not_with_their_own_run() -> None:
    authorize(state(gate()), ApproveGate(run_id="r1", gate="production", actor=Actor("bob", "cli")))
    with pytest.raises(Forbidden, match="alice triggered web#7"):
        authorize(state(gate()), ApproveGate(run_id="r1", gate="production", actor=Actor("alice", "cli")))


def test_a_gate_that_is_not_open_is_left_to_the_engine_to_explain() -> None:
    closed = replace(gate(), status=GateStatus.APPROVED)
    authorize(state(closed), ApproveGate(run_id="r1", gate="production", actor=who("alice")))
    authorize(state(), ApproveGate(run_id="r1", gate="nope", actor=who("alice")))
