"""A canary rollout over webhooks: each step (``rollout.step``), the promotion
(``rollout.promoted``) and an abort (``rollout.aborted``) reach a signed receiver in order, with
the rollout's router, weights and step; a subscription to other types hears none of them.

The served app drives a ``command`` router running ``true`` (it prints nothing: the weights it
was given count as applied), so the rollout moves for real without a proxy."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tests.api.conftest import StartApi
from tests.pipelines import APPROVER_PAUSE, canary
from tests.webhooks.conftest import Receiver, drain, subscribe

CANARY = canary("shop", ["set_weight: 10", APPROVER_PAUSE, "set_weight: 50"], router="shop")
ROUTED = {
    "production": {
        "routers": {"shop": {"command": ["true"], "pools": {"stable": ["shop-1"], "canary": ["shop-2"]}}}
    }
}
ROLLOUT = ["rollout.step", "rollout.promoted", "rollout.aborted"]


async def test_rollout_steps_promotion_and_abort_are_delivered(
    db_url: str, start_api: StartApi, receivers: Callable[[], Awaitable[Receiver]]
) -> None:
    api = await start_api(
        db_url,
        {"shop": CANARY},
        environments=ROUTED,
        webhook_allow=["127.0.0.1"],
        webhook_deliver=False,
        webhook_timeout_seconds=2.0,
    )
    rollouts, runs_only, staging = [await receivers() for _ in range(3)]
    await subscribe(api, rollouts, ROLLOUT, pipeline="shop", environment="production")
    await subscribe(api, runs_only, ["run.finished"])
    await subscribe(api, staging, ROLLOUT, environment="staging")

    promoted = await api.trigger("shop")
    await api.wait(promoted["id"], lambda r: r["status"] == "waiting")
    said = await api.post(f"/runs/{promoted['id']}/rollout/promote", who="approver", json={})
    assert said.status == 200, said.text
    assert (await api.wait(promoted["id"]))["status"] == "succeeded"

    aborted = await api.trigger("shop")
    await api.wait(aborted["id"], lambda r: r["status"] == "waiting")
    said = await api.post(
        f"/runs/{aborted['id']}/rollout/abort", who="approver", json={"reason": "error rate climbs"}
    )
    assert said.status == 200, said.text
    assert (await api.wait(aborted["id"]))["status"] == "canceled"

    await drain(api)
    await rollouts.wait_for(8)
    # the promotion is a step too: the promote jobs, then all traffic to the stable servers
    assert rollouts.types(promoted["id"]) == ["rollout.step"] * 4 + ["rollout.promoted"]
    assert rollouts.types(aborted["id"]) == ["rollout.step"] * 2 + ["rollout.aborted"]

    steps = [
        r.payload["data"]
        for r in rollouts.delivered
        if r.type == "rollout.step" and r.payload["data"]["run"]["id"] == promoted["id"]
    ]
    said = [(d["rollout"].get("step"), d["rollout"]["status"], d["rollout"]["action"]) for d in steps]
    assert said == [
        (1, "progressing", "set the canary's weight to 10%"),
        (2, "waiting", "pause until a person promotes"),
        (3, "progressing", "set the canary's weight to 50%"),
        (None, "promoting", "all traffic to the stable servers, now the new version"),
    ]
    assert steps[2]["rollout"]["steps"] == 3
    first = steps[0]
    assert first["rollout"]["router"] == "shop"
    assert first["rollout"]["desired"] == {"stable": 90, "canary": 10}
    assert first["stage"]["name"] == "production" and first["stage"]["environment"] == "production"
    assert first["event"]["name"] == "rollout.step" and first["run"]["ref"] == promoted["ref"]

    done = next(r.payload["data"] for r in rollouts.delivered if r.type == "rollout.promoted")
    assert done["rollout"]["status"] == "promoted" and done["rollout"]["canary"] == 0
    end = next(r.payload["data"] for r in rollouts.delivered if r.type == "rollout.aborted")
    assert end["rollout"]["status"] == "aborted"
    assert end["event"]["reason"] == "rollout aborted by approver: error rate climbs"
    assert end["rollout"]["applied"] == {"stable": 100, "canary": 0}

    assert runs_only.types() == ["run.finished", "run.finished"]
    assert staging.received == []
