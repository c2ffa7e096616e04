"""Roles: viewers read, deployers trigger and control their own runs, approvers clear gates,
admins do everything; refusals are 403 with the reason."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from bot.api import gateway
from storage.directory import Directory
from tests.api.conftest import Api, assert_problem
from tests.pipelines import one_job

DEFINITION = one_job("by-role")
YAML = {"Content-Type": "application/yaml"}


async def test_every_role_may_read(lite: Api) -> None:
    run = await lite.trigger("quick")
    for who in ("viewer", "deployer", "approver", "admin"):
        for path in ("/runs", f"/runs/{run['id']}", "/pipelines", "/pipelines/quick", "/environments"):
            reply = await lite.get(path, who)
            assert reply.status == 200, (who, path, reply.text)


async def test_a_viewer_may_not_change_anything(api: Api) -> None:
    run = await api.trigger("gated")
    await api.wait_status(run["id"], "waiting")
    refusals = [
        ("POST", "/pipelines/quick/runs", {"json": {}}, "trigger"),
        ("POST", f"/runs/{run['id']}/cancel", {"json": {}}, "control"),
        ("POST", f"/runs/{run['id']}/pause", {"json": {}}, "control"),
        ("POST", f"/runs/{run['id']}/gates/production/approve", {"json": {}}, "approve"),
        ("POST", f"/runs/{run['id']}/gates/production/reject", {"json": {}}, "approve"),
        ("POST", "/pipelines", {"data": DEFINITION, "headers": YAML}, "manage"),
        ("PUT", "/pipelines/by-role", {"data": DEFINITION, "headers": YAML}, "manage"),
        ("DELETE", "/pipelines/quick", {}, "manage"),
        ("GET", "/audit", {}, "manage"),
    ]
    for method, path, options, action in refusals:
        reply = await api.call(method, path, "viewer", **options)  # type: ignore[arg-type]
        assert_problem(reply, 403, "viewer", action)
    assert (await api.run(run["id"]))["status"] == "waiting"
    assert [r["id"] for r in (await api.get("/runs")).json["items"]] == [run["id"]]


async def test_a_deployer_triggers_and_controls_but_may_not_approve_or_manage(api: Api) -> None:
    run = await api.trigger("gated", who="deployer")
    await api.wait_status(run["id"], "waiting")
    assert_problem(
        await api.post(f"/runs/{run['id']}/gates/production/approve", "deployer"), 403, "deployer", "approve"
    )
    assert_problem(await api.post("/pipelines", "deployer", data=DEFINITION, headers=YAML), 403, "manage")
    assert_problem(await api.get("/audit", "deployer"), 403, "deployer")
    assert (await api.post(f"/runs/{run['id']}/cancel", "deployer")).status == 200


async def test_an_approver_may_not_trigger_or_control(lite: Api) -> None:
    assert_problem(await lite.post("/pipelines/quick/runs", "approver"), 403, "approver", "trigger")
    run = await lite.trigger("slow")
    assert_problem(await lite.post(f"/runs/{run['id']}/cancel", "approver"), 403, "approver", "control")
    assert_problem(await lite.get("/audit", "approver"), 403, "approver")
    await lite.post(f"/runs/{run['id']}/cancel", "deployer")


async def test_a_deployer_may_not_control_someone_elses_run_but_an_admin_may(api: Api) -> None:
    run = await api.trigger("slow", who="deployer")
    for verb in ("cancel", "pause", "resume"):
        reply = await api.post(f"/runs/{run['id']}/{verb}", "deployer2")
        assert_problem(reply, 403, "deployer2", "their own runs", "triggered by deployer")
    assert (await api.run(run["id"]))["status"] == "running"

    canceled = await api.post(f"/runs/{run['id']}/cancel", "admin", json={"reason": "on call"})
    assert canceled.status == 200, canceled.text
    assert canceled.json["status"] == "canceled"
    assert_problem(await api.post(f"/runs/{run['id']}/retry", "deployer2"), 403, "their own runs")
    retried = await api.post(f"/runs/{run['id']}/retry", "deployer")
    assert retried.status == 202, retried.text
    await api.post(f"/runs/{retried.json['id']}/cancel", "deployer")


async def test_an_admin_may_do_everything(lite: Api) -> None:
    assert (await lite.post("/pipelines", "admin", data=DEFINITION, headers=YAML)).status == 201
    run: dict[str, Any] = await lite.trigger("by-role", who="admin")
    assert (await lite.wait(run["id"]))["status"] == "succeeded"
    assert (await lite.get("/audit", "admin")).status == 200
    assert (await lite.call("DELETE", "/pipelines/by-role", "admin")).status == 200


async def test_revoking_a_token_or_a_role_takes_effect_once_the_short_auth_cache_lapses(
    lite: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway, "AUTH_CACHE_S", 0.2)  # (5 s in service: docs/rest.md)
    for who in ("viewer", "deployer"):  # (each principal as the cache now holds it)
        assert (await lite.get("/runs", who)).status == 200
    directory = Directory(lite.store)
    await lite.db(directory.revoke_token, "viewer", datetime.now(UTC))
    await lite.db(directory.revoke_grant, "deployer", "role", "deployer", datetime.now(UTC))
    await asyncio.sleep(0.3)
    assert_problem(await lite.get("/runs", "viewer"), 401, "unknown or revoked token")
    assert_problem(await lite.post("/pipelines/quick/runs", "deployer"), 403, "deployer has no role")
