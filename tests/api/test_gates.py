"""Gates: approve and reject, separation of duties, and who may clear a gate (fixed when it
opens)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from storage.directory import Directory
from tests.api.conftest import GROUP, Api, assert_problem


def gate(run: dict[str, Any], stage: str = "production") -> dict[str, Any]:
    return next(s["gate"] for s in run["stages"] if s["name"] == stage)  # type: ignore[no-any-return]


async def waiting(api: Api, pipeline: str = "gated", who: str = "deployer") -> dict[str, Any]:
    run = await api.trigger(pipeline, who=who)
    waited = await api.wait_status(run["id"], "waiting")
    assert waited["status"] == "waiting", waited
    assert gate(waited)["status"] == "open"
    return waited


async def test_an_approver_of_the_gate_group_approves_and_the_run_finishes(api: Api) -> None:
    run = await waiting(api)
    reply = await api.post(
        f"/runs/{run['id']}/gates/production/approve", "approver", json={"comment": "ship it"}
    )
    assert reply.status == 200, reply.text
    approved = gate(reply.json)
    assert approved["status"] == "approved"
    assert approved["decided_by"] == "approver"
    assert [(a["by"], a["comment"]) for a in approved["approvals"]] == [("approver", "ship it")]
    done = await api.wait(run["id"])
    assert done["status"] == "succeeded"

    again = await api.post(f"/runs/{run['id']}/gates/production/approve", "admin")
    assert_problem(again, 409, "approved")


async def test_a_gate_is_found_by_its_id_too(api: Api) -> None:
    run = await waiting(api)
    gate_id = gate(run)["id"]
    reply = await api.post(f"/runs/{run['ref'].replace('#', '%23')}/gates/{gate_id}/approve", "approver")
    assert reply.status == 200, reply.text


async def test_reject_fails_the_run_and_its_comment_is_shown_on_the_run(api: Api) -> None:
    run = await waiting(api)
    reply = await api.post(
        f"/runs/{run['id']}/gates/production/reject", "approver", json={"comment": "tests are red"}
    )
    assert reply.status == 200, reply.text
    done = await api.wait(run["id"])
    assert done["status"] == "failed"
    rejected = gate(done)
    assert rejected["status"] == "rejected"
    assert rejected["decided_by"] == "approver"
    assert "tests are red" in rejected["reason"]


async def test_self_approval_is_refused_with_the_reason(api: Api) -> None:
    run = await waiting(api, who="admin")  # admin may trigger and approve, and is in the group
    reply = await api.post(f"/runs/{run['id']}/gates/production/approve", "admin")
    assert_problem(reply, 403, "admin", "own gate", "allow_self_approval")
    still = await api.run(run["id"])
    assert gate(still)["status"] == "open" and gate(still)["approvals"] == []
    # someone else in the group still can
    assert (await api.post(f"/runs/{run['id']}/gates/production/approve", "approver")).status == 200


async def test_a_gate_that_allows_self_approval_can_be_approved_by_who_triggered(api: Api) -> None:
    run = await waiting(api, "selfok", who="admin")
    reply = await api.post(f"/runs/{run['id']}/gates/production/approve", "admin")
    assert reply.status == 200, reply.text
    assert (await api.wait(run["id"]))["status"] == "succeeded"


async def test_an_approver_outside_the_gate_group_is_refused(api: Api) -> None:
    run = await waiting(api)
    reply = await api.post(f"/runs/{run['id']}/gates/production/approve", "approver2")
    assert_problem(reply, 403, "approver2", GROUP)
    assert_problem(await api.post(f"/runs/{run['id']}/gates/production/reject", "approver2"), 403, GROUP)
    assert gate(await api.run(run["id"]))["status"] == "open"


async def test_joining_the_group_after_the_gate_opened_does_not_let_one_approve_it(api: Api) -> None:
    run = await waiting(api)
    directory = Directory(api.store)
    await api.db(directory.grant, "approver2", "group", GROUP, datetime.now(UTC))
    reply = await api.post(f"/runs/{run['id']}/gates/production/approve", "approver2")
    assert_problem(reply, 403, "approver2")
    assert gate(await api.run(run["id"]))["status"] == "open"

    later = await waiting(api)  # a gate that opens after the grant: now approver2 qualifies
    assert (await api.post(f"/runs/{later['id']}/gates/production/approve", "approver2")).status == 200


async def test_unknown_gate_and_a_gate_not_open_yet(api: Api) -> None:
    run = await waiting(api)
    assert_problem(await api.post(f"/runs/{run['id']}/gates/nope/approve", "approver"), 404, "nope")
    assert_problem(await api.post(f"/runs/{run['id']}/gates/nope/reject", "approver"), 404, "nope")
    assert_problem(await api.post("/runs/nosuchrun/gates/production/approve", "approver"), 404)

    slow = await api.trigger("slow")
    assert_problem(await api.post(f"/runs/{slow['id']}/gates/wait/approve", "approver"), 404)
    await api.post(f"/runs/{slow['id']}/cancel", "deployer")


async def test_an_approver_whose_role_was_revoked_after_the_gate_opened_still_clears_it(api: Api) -> None:
    """Who may clear a gate is the gate's question, answered when it opened; the caller's role
    today does not enter into it."""
    first, second = await waiting(api), await waiting(api)
    directory = Directory(api.store)
    await api.db(directory.revoke_grant, "approver", "role", "approver", datetime.now(UTC))
    assert "approver" not in (await api.db(directory.principal, "approver", datetime.now(UTC))).roles

    reply = await api.post(f"/runs/{first['id']}/gates/production/approve", "approver")
    assert reply.status == 200, reply.text
    assert gate(reply.json)["decided_by"] == "approver"
    rejected = await api.post(f"/runs/{second['id']}/gates/production/reject", "approver")
    assert rejected.status == 200, rejected.text
    assert gate(rejected.json)["status"] == "rejected"

    later = await waiting(api)  # a gate that opened after the revocation: no longer
    refused = await api.post(f"/runs/{later['id']}/gates/production/approve", "approver")
    assert_problem(refused, 403, "approver", "when gate production", "opened")
    assert gate(await api.run(later["id"]))["status"] == "open"


async def test_a_role_granted_after_the_gate_opened_does_not_let_one_clear_it(api: Api) -> None:
    run = await waiting(api)
    directory = Directory(api.store)
    at = datetime.now(UTC)
    await api.db(directory.grant, "viewer", "role", "approver", at)
    await api.db(directory.grant, "viewer", "group", GROUP, at)
    for verb in ("approve", "reject"):
        reply = await api.post(f"/runs/{run['id']}/gates/production/{verb}", "viewer")
        assert_problem(reply, 403, "viewer did not hold the approver role", "when gate production")
    assert gate(await api.run(run["id"]))["status"] == "open"

    later = await waiting(api)
    assert (await api.post(f"/runs/{later['id']}/gates/production/approve", "viewer")).status == 200


async def test_who_triggered_a_self_approvable_gate_still_needs_the_approver_role(api: Api) -> None:
    run = await waiting(api, "selfok", who="deployer")
    for verb in ("approve", "reject"):
        reply = await api.post(f"/runs/{run['id']}/gates/production/{verb}", "deployer")
        assert_problem(reply, 403, "deployer did not hold the approver role")
    assert gate(await api.run(run["id"]))["status"] == "open"
