"""Promotion, rollback, the queue and the `why` explainer over HTTP, with real runs: artifacts
built by jobs, promotion order along the path, rollback choosing the last good artifact after
a series of successes and failures, and the lock a rollback leaves behind."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bot.api import GATEWAY
from bot.api.gateway import HOLD_KEYED_COMMAND
from tests.api.conftest import Api, Reply, StartApi, assert_problem

SHOP = """
name: shop
parameters:
  - {name: version, required: true}
stages:
  - name: build
    jobs:
      - name: image
        run: |
          digest="sha256:$(printf %064d "${SHIPYARD_PARAM_VERSION//./}")"
          uri="oci://registry.example/shop:$SHIPYARD_PARAM_VERSION"
          echo "artifact=shop@$SHIPYARD_PARAM_VERSION digest=$digest uri=$uri" >> "$SHIPYARD_OUTPUT"
  - name: staging
    environment: staging
    jobs:
      - name: deploy
        run: |
          what="$SHIPYARD_ARTIFACT_NAME@$SHIPYARD_ARTIFACT_VERSION"
          echo "$what $SHIPYARD_ARTIFACT_DIGEST" >> "{ledger}.staging"
  - name: production
    environment: production
    jobs:
      - name: deploy
        run: |
          echo "$SHIPYARD_ARTIFACT_VERSION" >> "{ledger}.production"
          [ "$SHIPYARD_ARTIFACT_VERSION" != "3.0.0" ]
"""
ENVIRONMENTS = {"staging": {}, "production": {}}


async def _shop(
    start_api: StartApi,
    db_url: str,
    tmp_path: Path,
    environments: Mapping[str, Any] = ENVIRONMENTS,
    **settings: Any,
) -> Api:
    shop = SHOP.replace("{ledger}", str(tmp_path / "ledger"))
    return await start_api(db_url, {"shop": shop}, environments=environments, **settings)


async def _release(api: Api, version: str, status: str = "succeeded") -> dict[str, Any]:
    run = await api.trigger("shop", parameters={"version": version})
    done = await api.wait(run["id"])
    assert done["status"] == status, done["reason"]
    return done


async def test_a_job_registers_its_artifact_and_deploy_stages_receive_it(
    db_url: str, start_api: StartApi, tmp_path: Path
) -> None:
    api = await _shop(start_api, db_url, tmp_path)
    await _release(api, "1.0.0")
    artifact = (await api.get("/artifacts/shop@1.0.0")).json
    assert artifact["digest"] == "sha256:" + "0" * 61 + "100"
    assert (tmp_path / "ledger.staging").read_text() == f"shop@1.0.0 {artifact['digest']}\n"
    history = (await api.get("/environments/production/deployments")).json["items"]
    assert [(d["artifact"], d["status"], d["kind"]) for d in history] == [
        ("shop@1.0.0", "succeeded", "deploy")
    ]


async def test_promotion_follows_the_path_and_never_rebuilds(
    db_url: str, start_api: StartApi, tmp_path: Path
) -> None:
    api = await _shop(start_api, db_url, tmp_path)
    registered = await api.post(
        "/artifacts",
        "deployer",
        json={
            "name": "shop",
            "version": "2.0.0",
            "digest": "sha256:" + "2" * 64,
            "uri": "oci://registry.example/shop:2.0.0",
        },
    )
    assert registered.status == 201, registered.text
    too_early = await api.post(
        "/artifacts/shop@2.0.0/promote",
        "deployer",
        json={"environment": "production", "pipeline": "shop", "parameters": {"version": "2.0.0"}},
    )
    assert_problem(
        too_early, 403, "has not been deployed successfully to staging", "promote it to staging first"
    )

    staged = await api.post(
        "/artifacts/shop@2.0.0/promote",
        "deployer",
        json={"environment": "staging", "pipeline": "shop", "parameters": {"version": "2.0.0"}},
    )
    assert staged.status == 202, staged.text
    run = await api.wait(staged.json["id"])
    assert run["status"] == "succeeded" and run["kind"] == "promotion"
    assert [s["status"] for s in run["stages"]] == ["skipped", "succeeded", "skipped"]  # nothing rebuilt
    assert (tmp_path / "ledger.staging").read_text() == f"shop@2.0.0 sha256:{'2' * 64}\n"

    live = await api.post(
        "/artifacts/shop@2.0.0/promote",
        "deployer",
        json={"environment": "production", "pipeline": "shop", "parameters": {"version": "2.0.0"}},
    )
    assert live.status == 202, live.text
    assert (await api.wait(live.json["id"]))["status"] == "succeeded"
    assert (tmp_path / "ledger.production").read_text() == "2.0.0\n"

    marked = await api.post("/artifacts/shop@2.0.0/mark-bad", "approver", json={"reason": "leaks memory"})
    assert marked.status == 200, marked.text
    again = await api.post(
        "/artifacts/shop@2.0.0/promote",
        "deployer",
        json={"environment": "staging", "pipeline": "shop", "parameters": {"version": "2.0.0"}},
    )
    assert_problem(again, 409, "marked bad", "leaks memory")


async def test_a_retry_of_a_failed_promotion_deploys_to_the_same_environment_again(
    db_url: str, start_api: StartApi, tmp_path: Path
) -> None:
    api = await _shop(start_api, db_url, tmp_path)
    await _release(api, "3.0.0", status="failed")  # built and staged; production refuses 3.0.0
    promote = {"environment": "production", "pipeline": "shop", "parameters": {"version": "3.0.0"}}
    started = await api.post("/artifacts/shop@3.0.0/promote", "deployer", json=promote)
    assert started.status == 202, started.text
    promotion = await api.wait(started.json["id"])
    assert (promotion["status"], promotion["deploy_to"]) == ("failed", "production")

    retried = await api.post(f"/runs/{promotion['id']}/retry", "deployer")
    assert retried.status == 202, retried.text
    retry = await api.wait(retried.json["id"])
    assert (retry["kind"], retry["deploy_to"]) == ("promotion", "production")
    assert retry["retry_of"] == promotion["id"]
    assert [s["status"] for s in retry["stages"]] == ["skipped", "skipped", "failed"]  # production only
    assert (tmp_path / "ledger.production").read_text().split() == ["3.0.0", "3.0.0", "3.0.0"]
    assert len((tmp_path / "ledger.staging").read_text().splitlines()) == 1  # staged once, by the release
    engine = sa.create_engine(db_url)  # written to its column, not only kept in the process
    try:
        with engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT id, deploy_to FROM run WHERE kind = 'promotion'")).all()
    finally:
        engine.dispose()
    assert sorted(map(tuple, stored)) == sorted(
        [(promotion["id"], "production"), (retry["id"], "production")]
    )


async def test_a_retry_names_the_run_whose_work_it_reused_through_a_chain_of_retries(
    db_url: str, start_api: StartApi, tmp_path: Path
) -> None:
    api = await _shop(start_api, db_url, tmp_path)
    release = await _release(api, "3.0.0", status="failed")
    assert release["deploy_to"] is None  # a deploy runs every stage
    ref = release
    for _ in range(2):
        retried = await api.post(f"/runs/{ref['id']}/retry", "deployer")
        assert retried.status == 202, retried.text
        ref = await api.wait(retried.json["id"])
        reused = [(s["name"], s["reused_from"], [j["reused_from"] for j in s["jobs"]]) for s in ref["stages"]]
        assert reused == [
            ("build", release["id"], [release["id"]]),
            ("staging", release["id"], [release["id"]]),
            ("production", None, [None]),
        ]
        assert ref["stages"][0]["reason"] == "reused from shop#1"


async def test_rollback_picks_the_last_good_artifact_and_locks_the_environment(
    db_url: str, start_api: StartApi, tmp_path: Path
) -> None:
    api = await _shop(start_api, db_url, tmp_path)
    await _release(api, "1.0.0")
    await _release(api, "2.0.0")
    await _release(api, "3.0.0", status="failed")  # production refuses 3.0.0

    plan = (await api.get("/environments/production/rollback")).json
    assert (plan["current"], plan["target"]) == ("shop@3.0.0", "shop@2.0.0")
    assert plan["summary"] == "roll production back from shop@3.0.0 to shop@2.0.0"

    started = await api.post("/environments/production/rollback", "deployer", json={})
    assert started.status == 202, started.text
    run = await api.wait(started.json["id"])
    assert run["status"] == "succeeded" and run["kind"] == "rollback"
    assert (tmp_path / "ledger.production").read_text().split() == ["1.0.0", "2.0.0", "3.0.0", "2.0.0"]
    latest = (await api.get("/environments/production/deployments")).json["items"][0]
    assert (latest["artifact"], latest["kind"]) == ("shop@2.0.0", "rollback")

    why = (await api.get("/environments/production/blockers")).json
    assert not why["clear"] and why["blockers"][0]["kind"] == "lock"
    assert "rolled back to shop@2.0.0" in why["blockers"][0]["what"]
    held = await api.trigger("shop", parameters={"version": "4.0.0"})
    waiting = await api.wait(held["id"], lambda r: r["status"] in ("queued", "failed", "succeeded"))
    assert waiting["status"] == "queued" and "rolled back to shop@2.0.0" in waiting["reason"]

    # the next rollback goes further back, passing over what was marked bad
    assert (
        await api.post("/artifacts/shop@1.0.0/mark-bad", "approver", json={"reason": "cve"})
    ).status == 200
    nothing = await api.get("/environments/production/rollback")
    assert_problem(nothing, 404, "no earlier good deployment", "shop@1.0.0")
    chosen = (await api.get("/environments/production/rollback?to=2.0.0")).json
    assert chosen["target"] == "shop@2.0.0"


async def test_a_keyed_rollback_or_promotion_whose_claim_lapsed_starts_one_run(
    db_url: str, start_api: StartApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like a trigger, a rollback or promotion under an ``Idempotency-Key`` whose request stalled
    past its lease and was taken over by a retry is fenced out: the key makes one run."""
    api = await _shop(start_api, db_url, tmp_path, idempotency_lease_seconds=1.0)
    await _release(api, "1.0.0")
    await _release(api, "2.0.0")
    stalled: list[str] = []

    async def stalled_renewal(caller: str, key: str, holder: str) -> bool:
        stalled.append(holder)
        return True  # as if renewed, but nothing reached the database

    monkeypatch.setattr(api.client.app[GATEWAY], "renew_key", stalled_renewal, raising=True)

    async def send(path: str, body: dict[str, Any]) -> Reply:
        return await api.post(path, "deployer", json=body, headers={"Idempotency-Key": f"once{path}"})

    cases = [
        ("/environments/production/rollback", {}, "rollback"),
        ("/artifacts/shop@2.0.0/promote", {"environment": "staging"}, "promotion"),
    ]
    for path, body, kind in cases:
        stalled.clear()
        monkeypatch.setenv(HOLD_KEYED_COMMAND, "6")  # the first request works well past its lease
        first = asyncio.ensure_future(send(path, body))
        while not stalled:  # it claimed the key and tried to renew it
            await asyncio.sleep(0.05)
        monkeypatch.delenv(HOLD_KEYED_COMMAND)
        retry = await send(path, body)
        while retry.status == 409 and not first.done():  # until the first claim's lease ran out
            await asyncio.sleep(0.1)
            retry = await send(path, body)
        assert retry.status == 202 and "Idempotent-Replayed" not in retry.headers, retry.text
        assert_problem(await first, 409, "still being processed")
        runs = (await api.get("/runs?pipeline=shop&limit=200")).json["items"]
        assert [r["id"] for r in runs if r["kind"] == kind] == [retry.json["id"]]
        again = await send(path, body)
        assert again.headers["Idempotent-Replayed"] == "true" and again.json["id"] == retry.json["id"]
        await api.wait(retry.json["id"])


async def test_break_glass_goes_through_a_freeze_and_someone_else_must_review_it(
    sqlite_url: str, start_api: StartApi, tmp_path: Path
) -> None:
    frozen = {
        "staging": {},
        "production": {
            "freezes": [{"every": "* * * * *", "until": "0 0 1 1 *", "reason": "year-end"}],
            "approvals": {"from": ["role:approver"]},
            "break_glass_review": "2h",
        },
    }
    api = await _shop(start_api, sqlite_url, tmp_path, frozen)
    body = {"parameters": {"version": "1.0.0"}, "break_glass": "checkout is down"}
    refused = await api.post("/pipelines/shop/runs", "deployer", json=body)
    assert_problem(refused, 403, "only admins may break the glass")

    started = await api.post("/pipelines/shop/runs", "admin", json=body)
    assert started.status == 202, started.text
    assert started.json["break_glass"] == "checkout is down"
    assert [g["stage"] for g in started.json["stages"] if g["gate"]] == []  # approvals waived
    done = await api.wait(started.json["id"])
    assert done["status"] == "succeeded", done["reason"]

    path = f"/runs/{done['id']}/review/acknowledge"
    assert_problem(await api.post(path, "admin", json={}), 403, "someone other than whoever broke the glass")
    acked = await api.post(path, "approver", json={})
    assert acked.status == 200, acked.text
    assert acked.json["acknowledged_by"] == "approver" and acked.json["admin"] == "admin"
    assert_problem(await api.post(path, "approver2", json={}), 409, "already acknowledged by approver")
    audit = (await api.get("/audit?action=acknowledge_review", "admin")).json["items"]
    assert [a["outcome"] for a in audit] == ["rejected", "accepted", "rejected"][::-1]


async def test_environment_paths_refuse_what_cannot_be_an_environment_name(lite: Api) -> None:
    long = "0" * 200
    for path in (
        f"/environments/{long}/blockers",
        f"/environments/{long}/queue",
        "/environments/Prod!/rollback",
    ):
        assert_problem(await lite.get(path), 404, "no environment")
    # a name nothing deploys to and nobody declared is a typo: not an empty queue, nor "clear"
    for path in ("/environments/nowhere/queue", "/environments/nowhere/blockers"):
        assert_problem(await lite.get(path), 404, "no environment 'nowhere' (environments: ")
    unknown = await lite.get("/environments/production/blockers?pipeline=nope")
    assert_problem(unknown, 404, "no pipeline 'nope'")
    assert (await lite.get("/environments/production/queue")).json["waiting"] == []
