"""Verification measured for real: a served Shipyard whose analysis loop asks a real Prometheus
about a real test service. A healthy release ends verified; a release whose service starts
answering 5xx during verification is rolled back automatically, within ``interval *
failure_limit`` plus 2 s of Prometheus seeing the errors, to the release verified before it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.api.conftest import Api, StartApi
from tests.checks.services import WebService
from tests.pipelines import built_and_deployed
from tests.prometheus import Prometheus

ERRORS = 'sum(rate(http_requests_total{code=~"5.."}[5s])) / sum(rate(http_requests_total[5s]))'
INTERVAL_S, FAILURE_LIMIT = 1, 2

SHOP = built_and_deployed()


def _environments(prometheus: Prometheus, service: WebService, verify_for: str) -> dict[str, Any]:
    return {
        "production": {
            "checks": {
                "error-rate": {
                    "prometheus": {"url": prometheus.url, "query": ERRORS},
                    "fail_if": "> 0.05",
                    "pass_if": "< 0.01",
                    "interval": f"{INTERVAL_S}s",
                },
                "smoke": {"http": {"url": f"{service.url}/healthz", "status": 200}, "interval": "1s"},
            },
            "health": ["error-rate", "smoke"],
            "verify": {
                "checks": ["error-rate", "smoke"],
                "for": verify_for,
                "failure_limit": FAILURE_LIMIT,
                # (an error rate that rises passes through the band between pass_if and fail_if)
                "inconclusive_limit": 3,
                "on_failure": "rollback",
            },
        }
    }


async def _scraped(prometheus: Prometheus, service: WebService) -> None:
    """Prometheus scrapes the service and has a healthy error rate (the first scrape of a new
    target takes Prometheus about 5 s)."""
    await asyncio.to_thread(prometheus.scrape, service.target)
    await asyncio.to_thread(prometheus.wait_for, ERRORS, lambda v: v is not None and v < 0.01)


async def _release(api: Api, version: str) -> dict[str, Any]:
    run = await api.trigger("shop", parameters={"version": version})
    return await api.wait(run["id"], lambda r: r["status"] in ("verifying", "failed", "canceled"))


async def test_a_healthy_release_is_verified_and_a_failing_one_rolled_back_at_once(
    db_url: str, start_api: StartApi, prometheus: Prometheus, web_service: WebService
) -> None:
    await _scraped(prometheus, web_service)
    api = await start_api(db_url, {"shop": SHOP}, environments=_environments(prometheus, web_service, "8s"))

    good = await _release(api, "1.0.0")
    assert good["status"] == "verifying", good["reason"]
    verified = await api.wait(good["id"], timeout=20)
    assert verified["status"] == "succeeded", verified["reason"]
    assert verified["stages"][1]["reason"].startswith("verified")
    history = (await api.get("/environments/production/deployments")).json["items"]
    assert [(d["artifact"], d["verification"]) for d in history] == [("shop@1.0.0", "verified")]

    bad = await _release(api, "2.0.0")
    assert bad["status"] == "verifying", bad["reason"]
    web_service.fail()  # the new release starts answering 5xx
    await asyncio.to_thread(prometheus.wait_for, ERRORS, lambda v: v is not None and v > 0.05)
    seen = time.monotonic()
    failed = await api.wait(bad["id"], timeout=20)
    took = time.monotonic() - seen
    assert failed["status"] == "failed"
    assert failed["reason"].startswith("verification of production failed: error-rate = ")
    assert "> 0.05" in failed["reason"] and "twice" in failed["reason"], failed["reason"]
    assert took <= INTERVAL_S * FAILURE_LIMIT + 2, took
    verification = (await api.get(f"/runs/{bad['id']}/verification")).json["items"]
    assert [(v["environment"], v["status"]) for v in verification] == [("production", "failed")]
    measured = verification[0]["measurements"]
    failing = [m for m in measured if m["check"] == "error-rate" and m["result"] == "failed"]
    assert len(failing) == FAILURE_LIMIT and all(float(m["value"]) > 0.05 for m in failing), measured
    assert verification[0]["reason"] in failed["reason"]

    runs = (await api.get("/runs?pipeline=shop")).json["items"]
    rollbacks = [r for r in runs if r["kind"] == "rollback"]
    assert len(rollbacks) == 1
    rolled = await api.wait(rollbacks[0]["id"], lambda r: r["status"] != "running", timeout=30)
    assert rolled["status"] in ("verifying", "succeeded", "failed"), rolled["reason"]
    history = (await api.get("/environments/production/deployments")).json["items"]
    assert ("shop@2.0.0", "deploy", "failed") in [
        (d["artifact"], d["kind"], d["verification"]) for d in history
    ]

    # the service still answers 5xx (nothing here really rolls it back): the rollback's own
    # verification fails, and a rollback is not rolled back again (people decide)
    done = await api.wait(rollbacks[0]["id"], timeout=30)
    assert done["status"] == "failed" and done["reason"].startswith("verification of production failed")
    runs = (await api.get("/runs?pipeline=shop")).json["items"]
    assert [r["kind"] for r in runs].count("rollback") == 1
