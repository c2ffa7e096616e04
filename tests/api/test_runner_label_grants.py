"""A runner carries only the labels granted to its token's principal. An environment's secrets
go to runners by their labels (its ``runner_labels``), so a label a runner merely says it carries
would hand production's secrets to any runner token: such a claim is refused, the job waits for a
runner that was granted the label, and the runner is told which label and how to grant it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bot.api import gateway
from core.access import Role
from core.runtime.http_link import HttpLink
from storage.directory import Directory
from tests.api.conftest import Api, StartApi, assert_problem
from tests.api.test_secrets import KEY, SAYS, VALUE, _stored

#: production's secrets go only to runners carrying prod-eu
PRODUCTION = {"production": {"runner_labels": ["prod-eu"]}}
CLAIM = {"runner": "eu-1", "limit": 1, "lease_s": 30, "labels": ["linux", "prod-eu"]}
HEADERS = {"Shipyard-Runner-Protocol": "1"}


def _token(api: Api, name: str, labels: list[str] | None = None) -> str:
    secret = Directory(api.store).create_token(
        name, [Role.RUNNER], datetime.now(UTC), by="tests", labels=labels
    )
    api.tokens[name] = secret
    return secret


def _url(api: Api) -> str:
    return str(api.client.make_url("/")).rstrip("/")


async def test_a_runner_claiming_a_label_not_granted_to_it_gets_no_job_and_no_secret(
    db_url: str, start_api: StartApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway, "AUTH_CACHE_S", 0.0)  # (no cache: a grant counts at once; 5 s in service)
    _stored(db_url, KEY)
    api = await start_api(db_url, {"says": SAYS}, secret_key=KEY, environments=PRODUCTION, runner_capacity=0)
    await api.db(_token, api, "eu-1", ["linux"])
    run = await api.trigger("says")

    refused = await api.call("POST", "/runner/claim", "eu-1", json=CLAIM, headers=HEADERS)
    problem = assert_problem(
        refused, 403, "may not carry label prod-eu", "shipyard access grant eu-1 label:prod-eu"
    )
    assert problem["ungranted_labels"] == ["prod-eu"] and VALUE not in refused.text
    listed = await api.get("/runners")
    assert [r["name"] for r in listed.json["items"]] == []  # (what it said it carries is not recorded)
    job = (await api.get(f"/runs/{run['id']}")).json["stages"][0]["jobs"][0]
    assert job["status"] == "queued" and job["runner"] is None

    # granted the label, the same token claims the job, with the environment's secret
    await api.db(lambda: Directory(api.store).grant("eu-1", "label", "prod-eu", datetime.now(UTC)))
    claimed = await api.call("POST", "/runner/claim", "eu-1", json=CLAIM, headers=HEADERS)
    assert claimed.status == 200, claimed.text
    (assignment,) = claimed.json["assignments"]
    assert assignment["run_id"] == run["id"] and assignment["env"]["DEPLOY_KEY"] == VALUE


async def test_a_label_granted_to_a_group_is_carried_by_its_members(
    sqlite_url: str, start_api: StartApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway, "AUTH_CACHE_S", 0.0)
    api = await start_api(sqlite_url, {"says": SAYS}, environments=PRODUCTION, runner_capacity=0)
    await api.db(_token, api, "eu-1")
    now = datetime.now(UTC)
    directory = Directory(api.store)
    await api.db(lambda: directory.grant("prod-runners", "label", "prod-eu", now))
    await api.db(lambda: directory.grant("eu-1", "group", "prod-runners", now))
    await api.trigger("says")
    body = {**CLAIM, "labels": ["prod-eu"]}
    claimed = await api.call("POST", "/runner/claim", "eu-1", json=body, headers=HEADERS)
    assert claimed.status == 200 and len(claimed.json["assignments"]) == 1, claimed.text
    # leaving the group takes the label away
    await api.db(lambda: directory.revoke_grant("eu-1", "group", "prod-runners", datetime.now(UTC)))
    assert_problem(
        await api.call("POST", "/runner/claim", "eu-1", json=body, headers=HEADERS), 403, "prod-eu"
    )


async def test_a_runner_refused_its_claim_stops_claiming_and_says_why(
    sqlite_url: str, start_api: StartApi
) -> None:
    api = await start_api(sqlite_url, {"says": SAYS}, environments=PRODUCTION, runner_capacity=0)
    token = await api.db(_token, api, "eu-1")
    link = HttpLink(_url(api), token, "eu-1", labels=["prod-eu"], claim_wait_s=0)
    try:
        await api.trigger("says")
        assert await link.claim("eu-1", 1, 30) == []
    finally:
        await link.close()
    assert link.drained.is_set()
    assert link.refusal == (
        "the server refused this runner (403): runner eu-1 may not carry label prod-eu: "
        "an operator grants one with `shipyard access grant eu-1 label:prod-eu`"
    )
