"""A person acting through an incoming trigger is still that person: the principal who created
a trigger is among those who asked for the runs it fires, so they cannot approve those runs'
gates (separation of duties), unless a gate allows self-approval; and a trigger fires only
while its owner may still start runs (asked each time it fires, as for a schedule). Over real
HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from core.access import Role
from storage.directory import Directory
from tests.api.conftest import Api, Reply, assert_problem
from tests.webhooks.conftest import StartHooks
from tests.webhooks.test_incoming import generic, github, make_trigger, push_payload, rejected, runs_of


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


async def owned_by_ops(api: Api, pipeline: str, kind: str) -> tuple[Directory, dict[str, Any]]:
    """A trigger created by ``ops``, an admin of its own (so the test's admin can read the log)."""
    directory = Directory(api.store)
    api.tokens["ops"] = await api.db(
        lambda: directory.create_token("ops", [Role.ADMIN], datetime.now(UTC), by="tests")
    )
    made = await api.post("/triggers", "ops", json={"pipeline": pipeline, "kind": kind})
    assert made.status == 201, made.text
    return directory, made.json


def refused_for(reply: Reply, trigger: dict[str, Any], why: str) -> None:
    body = assert_problem(
        reply,
        403,
        f"trigger {trigger['id']} starts runs on behalf of ops, who may no longer start runs ({why})",
        "re-create the trigger",
    )
    assert (body["owner"], body["trigger"]) == ("ops", trigger["id"])


async def test_a_trigger_whose_owner_lost_the_role_refuses_to_fire_until_they_may_again(
    db_url: str, start_hooks: StartHooks
) -> None:
    api = await start_hooks(db_url)
    directory, trigger = await owned_by_ops(api, "quick", "generic")
    assert (await generic(api, trigger, {})).status == 202

    def regrant(*roles: str) -> None:
        directory.sync_roles("ops", set(roles), datetime.now(UTC))

    await api.db(regrant, "approver")
    refused_for(await generic(api, trigger, {}), trigger, "ops holds approver")
    await api.db(regrant)  # nothing left: as good as gone
    refused_for(await generic(api, trigger, {}), trigger, "ops holds no role")
    assert len(await runs_of(api, "quick")) == 1

    audit = await rejected(api, "hook_trigger")
    assert [(a["actor"], a["channel"], a["detail"]["owner"], a["detail"]["status"]) for a in audit] == [
        (f"trigger:{trigger['id']}", "webhook", "ops", 403)
    ] * 2
    assert [a["reason"].split("(")[-1] for a in audit] == [
        "ops holds no role); an admin must re-create the trigger under a principal who may",
        "ops holds approver); an admin must re-create the trigger under a principal who may",
    ]

    await api.db(regrant, "deployer")  # no longer an admin, but may start runs: it fires again
    fired = await generic(api, trigger, {})
    assert fired.status == 202, fired.text
    assert fired.json["run"]["requested_by"] == ["ops", f"trigger:{trigger['id']}"]


async def test_a_trigger_whose_owner_token_was_revoked_refuses_pushes_and_pings(
    db_url: str, start_hooks: StartHooks
) -> None:
    api = await start_hooks(db_url)
    directory, trigger = await owned_by_ops(api, "pushed", "github")
    await api.db(directory.revoke_token, "ops", datetime.now(UTC))

    why = "ops's API token was revoked"
    refused_for(await github(api, trigger, push_payload()), trigger, why)
    refused_for(
        await github(api, trigger, {"zen": "Design for failure.", "hook_id": 1}, event="ping"), trigger, why
    )
    # a sender without the secret learns nothing about the owner
    forged = await github(api, trigger, push_payload(), secret="not the secret")
    assert "ops" not in assert_problem(forged, 401, "does not match")["detail"]
    assert await runs_of(api, "pushed") == []
    reasons = [a["reason"] for a in await rejected(api, "hook_trigger")]
    assert len(reasons) == 3 and sum(why in r for r in reasons) == 2


async def test_a_push_refused_for_its_owner_stays_refused_once_the_owner_may_again(
    db_url: str, start_hooks: StartHooks
) -> None:
    """A push captured while the owner could not start runs, sent again once they may, gets the
    refusal it got and starts no run of its old commit; a new push fires."""
    api = await start_hooks(db_url)
    directory, trigger = await owned_by_ops(api, "pushed", "github")
    await api.db(lambda: directory.sync_roles("ops", {"approver"}, datetime.now(UTC)))
    old = push_payload(after="a" * 40)
    refused_for(await github(api, trigger, old), trigger, "ops holds approver")

    await api.db(lambda: directory.sync_roles("ops", {"deployer"}, datetime.now(UTC)))
    again = await github(api, trigger, old)
    refused_for(again, trigger, "ops holds approver")
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await runs_of(api, "pushed") == []
    fired = await github(api, trigger, push_payload(after="b" * 40))
    assert fired.status == 202, fired.text
    assert [r["revision"] for r in await runs_of(api, "pushed")] == ["b" * 40]
