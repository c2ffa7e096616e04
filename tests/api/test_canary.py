"""Canary rollouts end to end: a served Shipyard drives a real nginx in front of two real
versions of a service. Traffic follows the steps (2,000 requests per step land on the canary
within ±3 points of its weight), an open-ended pause is a gate (not the run's author; an
approver promotes it), promotion returns all traffic to stable after the promote jobs, and a
person's abort puts all traffic back on stable before the abort jobs run and the run ends."""

from __future__ import annotations

from typing import Any

from tests.api.conftest import StartApi, assert_problem, parse_sse
from tests.routing import Nginx, send

#: the promote and abort jobs leave a mark the test reads (the real jobs would deploy)
CANARY = """name: web
parameters:
  - {name: version, required: true}
stages:
  - name: production
    environment: production
    strategy:
      canary:
        router: web
        steps:
          - set_weight: 10
          - pause: {duration: 1s}
          - set_weight: 50
          - pause: {approvers: ["role:approver"]}
          - set_weight: 100
        promote: [{name: promote, run: "echo promoted=$SHIPYARD_PARAM_VERSION >> $SHIPYARD_OUTPUT"}]
        abort: [{name: remove-canary, run: "echo removed=yes >> $SHIPYARD_OUTPUT"}]
    jobs:
      - {name: deploy-canary, run: "true"}
"""


def _environments(nginx: Nginx) -> dict[str, Any]:
    return {
        "production": {
            "routers": {"web": nginx.router().model_dump(mode="json", exclude_none=True)},
        }
    }


def _rollout(run: dict[str, Any]) -> dict[str, Any]:
    rollout = run["rollout"]
    assert rollout is not None, (run["status"], run["reason"], run["stages"])
    return dict(rollout)


async def _share(nginx: Nginx) -> float:
    tally = await send(nginx.port, 2000)
    assert tally.failures == [], tally.failures[:3]
    return tally.share("canary")


async def test_a_canary_moves_real_traffic_step_by_step_and_is_promoted(
    db_url: str, start_api: StartApi, nginx: Nginx
) -> None:
    api = await start_api(db_url, {"web": CANARY}, environments=_environments(nginx))
    run = await api.trigger("web", parameters={"version": "2.0.0"})

    waiting = await api.wait(run["id"], lambda r: r["status"] == "waiting", timeout=30)
    rollout = _rollout(waiting)
    assert (rollout["status"], rollout["step"], rollout["steps"]) == ("waiting", 4, 5), rollout
    assert rollout["desired"] == rollout["applied"] == {"stable": 50, "canary": 50}
    assert abs(await _share(nginx) - 50) <= 3

    # the pause is a gate: not who triggered the run, and only approvers
    mine = await api.post(f"/runs/{run['id']}/rollout/promote", who="deployer", json={})
    assert_problem(mine, 403)
    promoted = await api.post(f"/runs/{run['id']}/rollout/promote", who="approver", json={"comment": "ok"})
    assert promoted.status == 200, promoted.json

    done = await api.wait(run["id"], timeout=30)
    assert done["status"] == "succeeded", done["reason"]
    rollout = _rollout(done)
    assert rollout["status"] == "promoted" and rollout["applied"] == {"stable": 100, "canary": 0}
    jobs = {j["name"]: j for j in done["stages"][0]["jobs"]}
    assert jobs["promote"]["status"] == "succeeded" and jobs["promote"]["outputs"] == {"promoted": "2.0.0"}
    assert jobs["remove-canary"]["status"] in ("pending", "skipped", "canceled")
    assert await _share(nginx) == 0  # the new version is stable now: the canary takes nothing

    events = parse_sse((await api.stream(f"/runs/{run['id']}/events")).text)
    steps = [e["data"]["data"]["canary"] for e in events if e["event"] == "rollout.weights_applied"]
    assert steps == [10, 50, 100, 0], steps


async def test_an_abort_puts_all_traffic_back_on_stable_then_runs_the_abort_jobs(
    db_url: str, start_api: StartApi, nginx: Nginx
) -> None:
    api = await start_api(db_url, {"web": CANARY}, environments=_environments(nginx))
    run = await api.trigger("web", parameters={"version": "2.0.0"})
    await api.wait(run["id"], lambda r: r["status"] == "waiting", timeout=30)
    assert abs(await _share(nginx) - 50) <= 3

    aborted = await api.post(
        f"/runs/{run['id']}/rollout/abort", who="approver", json={"reason": "latency looks off"}
    )
    assert aborted.status == 200, aborted.json
    done = await api.wait(run["id"], timeout=30)
    assert done["status"] == "canceled"
    assert done["reason"] == "rollout aborted by approver: latency looks off"
    rollout = _rollout(done)
    assert rollout["status"] == "aborted" and rollout["applied"] == {"stable": 100, "canary": 0}
    jobs = {j["name"]: j for j in done["stages"][0]["jobs"]}
    assert jobs["remove-canary"]["outputs"] == {"removed": "yes"}
    assert jobs["promote"]["status"] != "succeeded"
    assert await _share(nginx) == 0

    again = await api.post(f"/runs/{run['id']}/rollout/abort", who="approver", json={})
    assert_problem(again, 409, "no rollout under way")
