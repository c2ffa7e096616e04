"""A person acting through an incoming trigger is still that person: the principal who created
a trigger is among those who asked for the runs it fires, so they cannot approve those runs'
gates (separation of duties), unless a gate allows self-approval. Over real HTTP, on SQLite and
PostgreSQL."""

from __future__ import annotations

from typing import Any

from tests.api.conftest import assert_problem
from tests.webhooks.conftest import StartHooks
from tests.webhooks.test_incoming import generic, make_trigger


def gate(run: dict[str, Any]) -> dict[str, Any]:
    return next(s["gate"] for s in run["stages"] if s["name"] == "production")  # type: ignore[no-any-return]


async def test_the_owner_of_a_trigger_cannot_approve_the_runs_it_fires(
    db_url: str, start_hooks: StartHooks
) -> None:
    api = await start_hooks(db_url)
    trigger = await make_trigger(api, "gated", "generic")  # created by admin, in the gate's group
    fired = await generic(api, trigger, {})
    assert fired.status == 202, fired.text
    run = fired.json["run"]
    assert run["triggered_by"] == {"principal": f"trigger:{trigger['id']}", "channel": "webhook"}
    assert run["requested_by"] == ["admin", f"trigger:{trigger['id']}"]

    waiting = await api.wait_status(run["id"], "waiting")
    assert gate(waiting)["status"] == "open"
    refused = await api.post(f"/runs/{run['id']}/gates/production/approve", "admin")
    assert_problem(
        refused,
        403,
        f"admin asked for {run['ref']} through trigger:{trigger['id']} and cannot approve its own gate",
        "allow_self_approval",
    )
    assert gate(await api.run(run["id"]))["approvals"] == []

    approved = await api.post(f"/runs/{run['id']}/gates/production/approve", "approver")
    assert approved.status == 200, approved.text
    assert (await api.wait(run["id"]))["status"] == "succeeded"


async def test_a_gate_that_allows_self_approval_lets_the_owner_approve(
    db_url: str, start_hooks: StartHooks
) -> None:
    api = await start_hooks(db_url)
    trigger = await make_trigger(api, "selfok", "generic")
    fired = await generic(api, trigger, {})
    assert fired.status == 202, fired.text
    run = await api.wait_status(fired.json["run"]["id"], "waiting")
    approved = await api.post(f"/runs/{run['id']}/gates/production/approve", "admin")
    assert approved.status == 200, approved.text
