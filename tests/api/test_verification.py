"""Ending a deployment's verification over HTTP: approvers only, not by who triggered the run
when it passes, a clear 409 when nothing is being verified, and "failed" rolls back."""

from __future__ import annotations

from pathlib import Path

from tests.api.conftest import API_PIPELINES, Api, StartApi
from tests.factory import make_settings, serve
from tests.pipelines import one_deploy

VERIFIED = {
    "production": {
        "checks": {"smoke": {"command": ["true"], "interval": "1s"}},
        "verify": {"checks": ["smoke"], "for": "10m"},
    }
}


async def test_approvers_end_verification_early_and_the_triggerer_may_not_pass_it(
    db_url: str, start_api: StartApi
) -> None:
    api = await start_api(db_url, {"web": one_deploy("web")}, environments=VERIFIED)
    run = await api.trigger("web", "admin")
    verifying = await api.wait_status(run["id"], "verifying")
    assert verifying["status"] == "verifying", verifying["reason"]
    assert verifying["reason"] == "verifying production for 10m"
    path = f"/runs/{run['id']}/verification"

    viewer = await api.post(path, "viewer", json={"verdict": "passed"})
    assert viewer.status == 403, viewer.text
    deployer = await api.post(path, "deployer", json={"verdict": "failed"})
    assert deployer.status == 403 and "approve needs" in deployer.json["detail"], deployer.text
    own = await api.post(path, "admin", json={"verdict": "passed"})
    assert own.status == 403 and "separation of duties" in own.json["detail"], own.text
    bad = await api.post(path, "approver", json={"verdict": "fine"})
    assert bad.status == 422 and bad.json["errors"][0]["field"] == "verdict", bad.text

    passed = await api.post(path, "approver", json={"verdict": "passed", "reason": "dashboards are green"})
    assert passed.status == 200, passed.text
    done = await api.wait(run["id"])
    assert done["status"] == "succeeded"
    assert done["stages"][0]["reason"] == "verified by approver: dashboards are green"

    again = await api.post(path, "approver", json={"verdict": "failed"})
    assert again.status == 409 and "nothing is being verified" in again.json["detail"], again.text
    history = (await api.get("/environments/production/deployments")).json["items"]
    assert history[0]["verification"] == "verified"
    ended = (await api.get(f"/runs/{run['id']}/verification")).json["items"]
    assert [(v["status"], v["ended_by"]) for v in ended] == [("passed", "approver")]
    assert (await api.get("/runs/nope/verification")).status == 404


async def test_a_verification_whose_checks_all_left_the_configuration_is_decided_after_a_restart(
    db_url: str, start_api: StartApi, tmp_path: Path
) -> None:
    """The server restarts with no check configured anywhere while a deployment is verified: the
    verification is not left running for ever (holding production, its deadline long gone); it
    ends inconclusive at once and an approver decides."""
    first = await start_api(db_url, {"web": one_deploy("web")}, environments=VERIFIED)
    run = await first.trigger("web", "admin")
    await first.wait_status(run["id"], "verifying")
    await first.client.close()

    settings = make_settings(
        db_url,
        tmp_path,
        {**API_PIPELINES, "web": one_deploy("web")},
        runner_name="api-test",
        environments={"production": {}},
    )
    client = await serve(settings)
    try:
        again = Api(client, first.tokens, db_url)
        paused = await again.wait(run["id"], lambda r: "inconclusive" in r["reason"])
        assert paused["status"] == "verifying"
        assert paused["reason"] == (
            "verification of production inconclusive: production has no verification configured now; "
            "an approver decides"
        )
        passed = await again.post(f"/runs/{run['id']}/verification", "approver", json={"verdict": "passed"})
        assert passed.status == 200, passed.text
        assert (await again.wait(run["id"]))["status"] == "succeeded"
    finally:
        await client.close()


async def test_a_verdict_naming_a_stage_whose_verification_ended_is_refused_not_applied_to_the_next(
    db_url: str, start_api: StartApi
) -> None:
    """A script judged staging (``"stage": 1``) while a person passed it: production verifies
    now, and the script's "failed" is a 409 naming staging, not production rolled back."""
    from tests.pipelines import ship

    smoke = {"smoke": {"command": ["true"], "interval": "1s"}}
    verify = {"checks": ["smoke"], "for": "10m"}
    environments = {env: {"checks": smoke, "verify": verify} for env in ("staging", "production")}
    shop = ship(name="shop", staging=True, gates=False, compare=False)
    api = await start_api(db_url, {"shop": shop}, environments=environments)
    run = await api.trigger("shop", "admin", parameters={"version": "1.0.0"})
    verifying = await api.wait_status(run["id"], "verifying")
    staging = next(s for s in verifying["stages"] if s["status"] == "verifying")
    assert staging["environment"] == "staging"
    path = f"/runs/{run['id']}/verification"
    passed = await api.post(path, "approver", json={"verdict": "passed", "stage": staging["index"]})
    assert passed.status == 200, passed.text
    await api.wait(
        run["id"],
        lambda r: any(s["environment"] == "production" and s["status"] == "verifying" for s in r["stages"]),
    )
    # (as 1.0: JSON Schema counts it an integer, so a client may send it so)
    late = await api.post(path, "approver", json={"verdict": "failed", "stage": float(staging["index"])})
    assert late.status == 409, late.text
    assert "the verification of staging ended already" in late.json["detail"]
    after = await api.run(run["id"])
    assert after["status"] == "verifying"
    bad = await api.post(path, "approver", json={"verdict": "failed", "stage": -1})
    assert bad.status == 422 and bad.json["errors"][0]["field"] == "stage", bad.text
