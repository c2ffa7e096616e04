from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core.access import Action, Grant, Principal, Role, check_approver
from core.errors import Forbidden
from core.model import Gate, Run
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
        ({Role.ADMIN}, set(Action)),
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
