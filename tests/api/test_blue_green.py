"""Blue/green end to end through a real haproxy: the new version goes on the idle colour, the
switch moves all traffic in one router change with no failed request under continuous load, the
old colour is retired by its job after ``scale_down_after``, and the next release goes on the
other colour; post-switch checks that fail switch back, again without a failed request."""

from __future__ import annotations

from typing import Any

from tests.api.conftest import StartApi
from tests.routing import Haproxy, Load, send

#: haproxy's servers are named stable and canary; here they are the blue and green colours
POOLS = {"blue": ["stable"], "green": ["canary"]}


def _pipeline(name: str, post_checks: str = "") -> str:
    return f"""name: {name}
parameters:
  - {{name: version, required: true}}
stages:
  - name: production
    environment: production
    strategy:
      blue_green:
        router: site
        auto_promote: 1s
        {post_checks}
        scale_down_after: 1s
        scale_down: [{{name: retire, run: "echo retired=$SHIPYARD_ROLLOUT_RETIRED >> $SHIPYARD_OUTPUT"}}]
    jobs:
      - {{name: deploy, run: "echo pool=$SHIPYARD_ROLLOUT_POOL >> $SHIPYARD_OUTPUT"}}
"""


def _environments(haproxy: Haproxy) -> dict[str, Any]:
    return {
        "production": {
            "routers": {"site": haproxy.router(POOLS).model_dump(mode="json", exclude_none=True)},
            "checks": {"broken": {"command": ["false"], "interval": "1s"}},
        }
    }


def _jobs(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {j["name"]: j for j in run["stages"][0]["jobs"]}


async def test_blue_green_switches_with_no_failed_request_and_the_next_release_takes_the_other_colour(
    db_url: str, start_api: StartApi, haproxy: Haproxy
) -> None:
    pipelines = {
        "site": _pipeline("site"),
        "site-checked": _pipeline("site-checked", "post_checks: [broken]"),
    }
    api = await start_api(db_url, pipelines, environments=_environments(haproxy))
    assert (await send(haproxy.port, 200)).share("stable") == 100  # blue serves

    async with Load(haproxy.port) as load:
        run = await api.trigger("site", parameters={"version": "2.0.0"})
        done = await api.wait(run["id"], timeout=30)
    assert done["status"] == "succeeded", done["reason"]
    assert load.tally.failures == [] and load.tally.total > 50, load.tally.failures[:3]
    assert load.tally.versions["canary"] > 0  # (the switch happened under the load)
    jobs = _jobs(done)
    assert jobs["deploy"]["outputs"] == {"pool": "green"}
    assert jobs["retire"]["outputs"] == {"retired": "blue"}
    rollout = done["rollout"]
    assert (rollout["strategy"], rollout["status"], rollout["pools"]) == (
        "blue_green",
        "promoted",
        ["blue", "green"],
    )
    assert rollout["applied"] == {"blue": 0, "green": 100}
    assert (await send(haproxy.port, 200)).share("canary") == 100  # green serves

    # the next release goes on blue; its post-switch check fails: traffic switches back to green
    async with Load(haproxy.port) as load:
        run = await api.trigger("site-checked", parameters={"version": "3.0.0"})
        failed = await api.wait(run["id"], timeout=30)
    assert failed["status"] == "failed"
    assert failed["reason"].startswith("analysis at step 3 (blue at 100%) failed: broken"), failed["reason"]
    assert load.tally.failures == [], load.tally.failures[:3]
    assert load.tally.versions["stable"] > 0  # (blue served for a while: the switch and the switch back)
    assert _jobs(failed)["deploy"]["outputs"] == {"pool": "blue"}
    assert failed["rollout"]["applied"] == {"green": 100, "blue": 0}
    assert _jobs(failed)["retire"]["status"] != "succeeded"
    assert (await send(haproxy.port, 200)).share("canary") == 100  # green serves still


PROMOTED_BY_HAND = """name: site
parameters:
  - {name: version, required: true}
stages:
  - name: production
    environment: production
    strategy:
      blue_green:
        router: site
        approvers: ["role:approver"]
        scale_down: [{name: retire, run: "sleep 2"}]
    jobs:
      - {name: deploy, run: "true"}
"""


async def test_promoting_fully_before_the_switch_switches_before_the_old_colour_is_retired(
    db_url: str, start_api: StartApi, haproxy: Haproxy
) -> None:
    api = await start_api(db_url, {"site": PROMOTED_BY_HAND}, environments=_environments(haproxy))
    run = await api.trigger("site", parameters={"version": "2.0.0"})
    await api.wait(run["id"], lambda r: r["status"] == "waiting", timeout=30)
    promoted = await api.post(f"/runs/{run['id']}/rollout/promote-full", who="approver", json={})
    assert promoted.status == 200, promoted.json

    retiring = await api.wait(
        run["id"], lambda r: _jobs(r)["retire"]["status"] in ("running", "succeeded"), timeout=30
    )
    # blue is retired only once green serves all traffic
    assert retiring["rollout"]["applied"] == {"blue": 0, "green": 100}, retiring["rollout"]
    assert (await send(haproxy.port, 100)).share("canary") == 100
    done = await api.wait(run["id"], timeout=30)
    assert done["status"] == "succeeded", done["reason"]
    assert done["rollout"]["status"] == "promoted"


async def test_a_scale_down_that_fails_after_the_switch_leaves_traffic_on_the_new_colour(
    db_url: str, start_api: StartApi, haproxy: Haproxy
) -> None:
    """The switch went through and its checks passed; then the job retiring the old colour
    fails (it may have torn part of it down). Switching all traffic back to that colour would
    send users to what is being retired: the new colour keeps serving, the run fails saying so,
    and the next release goes on the old colour."""
    failing = _pipeline("site").replace(
        'run: "echo retired=$SHIPYARD_ROLLOUT_RETIRED >> $SHIPYARD_OUTPUT"',
        'run: "echo half gone >&2; exit 3"',
    )
    api = await start_api(db_url, {"site": failing}, environments=_environments(haproxy))
    async with Load(haproxy.port) as load:
        run = await api.trigger("site", parameters={"version": "2.0.0"})
        failed = await api.wait(run["id"], timeout=30)
    assert failed["status"] == "failed", failed["reason"]
    assert _jobs(failed)["retire"]["status"] == "failed"  # (the fault this test is about)
    assert "retire" in failed["reason"] and "green serves all traffic" in failed["reason"], failed["reason"]
    assert failed["rollout"]["applied"] == {"blue": 0, "green": 100}, failed["rollout"]
    assert load.tally.failures == [], load.tally.failures[:3]
    assert (await send(haproxy.port, 200)).share("canary") == 100  # green serves still

    again = await api.trigger("site", parameters={"version": "3.0.0"})
    await api.wait(again["id"], timeout=30)
    assert _jobs(await api.run(again["id"]))["deploy"]["outputs"] == {"pool": "blue"}
