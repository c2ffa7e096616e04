"""Ending a deployment's verification over HTTP: approvers only, not by who triggered the run
when it passes, a clear 409 when nothing is being verified, and "failed" rolls back."""

from __future__ import annotations

from tests.api.conftest import StartApi
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
