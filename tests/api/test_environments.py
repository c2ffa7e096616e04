"""Environments: every environment a pipeline deploys to, what runs there now, and the history
of deployments, newest first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.api.conftest import Api, assert_problem


async def test_environments_and_their_deployments_after_deploy_stages_ran(api: Api) -> None:
    first = await api.trigger("web", parameters={"ref": "aaaaaaa"}, revision="rev-1")
    assert (await api.wait(first["id"]))["status"] == "succeeded"
    second = await api.trigger("web", who="deployer2", parameters={"ref": "bbbbbbb"}, revision="rev-2")
    assert (await api.wait(second["id"]))["status"] == "succeeded"

    listed = await api.get("/environments")
    assert listed.status == 200, listed.text
    by_name = {e["name"]: e for e in listed.json["items"]}
    assert set(by_name) == {"staging", "production"}
    assert by_name["staging"]["current"]["run_ref"] == "web#2"
    assert by_name["production"]["current"] is None
    assert by_name["production"]["last_deployment"] is None

    staging = await api.get("/environments/staging")
    assert staging.status == 200, staging.text
    assert staging.json["id"] == staging.json["name"] == "staging"
    current = staging.json["current"]
    assert current["run_id"] == second["id"] and current["status"] == "succeeded"
    assert current["revision"] == "rev-2" and current["parameters"]["ref"] == "bbbbbbb"
    assert current["triggered_by"] == "deployer2" and current["stage"] == "staging"
    assert staging.json["last_deployment"]["id"] == current["id"]

    history = await api.get("/environments/staging/deployments")
    assert history.status == 200, history.text
    items = history.json["items"]
    assert [d["run_ref"] for d in items] == ["web#2", "web#1"]
    assert [d["revision"] for d in items] == ["rev-2", "rev-1"]
    assert items[0]["finished_at"] >= items[1]["finished_at"]
    assert history.json["next_cursor"] is None

    page = await api.get("/environments/staging/deployments?limit=1")
    rest = await api.get(f"/environments/staging/deployments?limit=1&cursor={page.json['next_cursor']}")
    assert [d["run_ref"] for d in page.json["items"] + rest.json["items"]] == ["web#2", "web#1"]
    assert rest.json["next_cursor"] is None

    empty = await api.get("/environments/production/deployments")
    assert empty.status == 200 and empty.json["items"] == []
    assert_problem(await api.get("/environments/moon"), 404, "moon", "staging")


async def test_a_stage_that_never_started_deployed_nothing(api: Api) -> None:
    run = await api.trigger("gated")
    await api.wait_status(run["id"], "waiting")
    await api.post(f"/runs/{run['id']}/gates/production/reject", "approver", json={"comment": "no"})
    assert (await api.wait(run["id"]))["status"] == "failed"
    assert (await api.get("/environments/production/deployments")).json["items"] == []
    assert (await api.get("/environments/production")).json["current"] is None


async def test_dora_keys_of_an_environment_and_bad_requests(api: Api) -> None:
    first = await api.trigger("web", parameters={"ref": "aaaaaaa"}, revision="rev-1")
    assert (await api.wait(first["id"]))["status"] == "succeeded"
    second = await api.trigger("web", parameters={"ref": "bbbbbbb"}, revision="rev-2")
    assert (await api.wait(second["id"]))["status"] == "succeeded"

    got = await api.get("/environments/staging/dora?window=30d")
    assert got.status == 200, got.text
    keys = got.json
    assert keys["environment"] == "staging" and keys["window"] == "30d"
    assert keys["deployment_frequency"]["deployments"] == 2
    assert keys["deployment_frequency"]["per_week"] == 2 * 7 / 30
    # no commit time was sent: unknown, not guessed
    assert keys["lead_time"] == {"median_seconds": None, "deployments": 0, "unknown": 2}
    assert keys["change_failure_rate"]["rate"] == 0 and keys["change_failure_rate"]["deployments"] == 2
    assert keys["time_to_restore"]["median_seconds"] is None
    other = (await api.get("/environments/staging/dora?pipeline=other")).json
    assert other["deployment_frequency"]["deployments"] == 0 and other["window"] == "30d"

    assert_problem(await api.get("/environments/staging/dora?window=month"), 400, "window")
    assert_problem(await api.get("/environments/staging/dora?window=400d"), 400, "365d")
    assert_problem(await api.get("/environments/staging/dora?window=s"), 400, "window")
    assert (await api.get("/environments/staging/dora?window=12h")).json["window"] == "12h"
    assert_problem(await api.get("/environments/moon/dora"), 404, "moon", "staging")


async def test_dora_lead_time_from_the_revision_time_a_trigger_sends(api: Api) -> None:
    committed = datetime.now(UTC) - timedelta(hours=2)
    run = await api.trigger(
        "web", parameters={"ref": "aaaaaaa"}, revision="rev-1", revision_time=committed.isoformat()
    )
    assert (await api.wait(run["id"]))["status"] == "succeeded"
    unknown = await api.trigger("web", parameters={"ref": "bbbbbbb"}, revision="rev-2")
    assert (await api.wait(unknown["id"]))["status"] == "succeeded"

    lead = (await api.get("/environments/staging/dora")).json["lead_time"]
    assert (lead["deployments"], lead["unknown"]) == (1, 1)
    assert 2 * 3600 <= lead["median_seconds"] < 2 * 3600 + 60
    naive = await api.post("/pipelines/web/runs", "deployer", json={"revision_time": "2026-12-01T10:00:00"})
    assert_problem(naive, 422, "revision_time")
    number = await api.post("/pipelines/web/runs", "deployer", json={"revision_time": 0})
    assert_problem(number, 422, "revision_time", "ISO 8601")
