"""``Idempotency-Key``: a repeat returns the first response, a different body with the same key
is 422, keys are scoped to the caller, a repeat while the first is in flight is 409, and a
hundred concurrent identical triggers make exactly one run."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, datetime, timedelta

from storage.idempotency import IdempotencyStore
from tests.api.conftest import Api, Reply, assert_problem


def keyed(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key, "Content-Type": "application/json"}


async def trigger(api: Api, key: str, body: dict[str, object], who: str = "deployer") -> Reply:
    return await api.post("/pipelines/quick/runs", who, data=json.dumps(body), headers=keyed(key))


async def runs_of(api: Api, pipeline: str) -> list[str]:
    reply = await api.get(f"/runs?pipeline={pipeline}&limit=200")
    assert reply.status == 200
    return [r["id"] for r in reply.json["items"]]


async def test_the_same_key_and_body_replay_the_first_response_and_another_body_is_422(api: Api) -> None:
    first = await trigger(api, "deploy-42", {"revision": "abc"})
    assert first.status == 202, first.text
    assert "Idempotent-Replayed" not in first.headers
    await api.wait(first.json["id"])

    again = await trigger(api, "deploy-42", {"revision": "abc"})
    assert again.status == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json == first.json  # the original response, byte for byte the same run
    assert again.headers["Location"] == first.headers["Location"]
    assert await runs_of(api, "quick") == [first.json["id"]]

    # the same key with another body, or on another path, is another request: 422
    assert_problem(await trigger(api, "deploy-42", {"revision": "def"}), 422, "Idempotency-Key")
    other = await api.post(
        "/pipelines/web/runs", "deployer", json={}, headers={"Idempotency-Key": "deploy-42"}
    )
    assert_problem(other, 422, "Idempotency-Key")
    assert await runs_of(api, "quick") == [first.json["id"]]
    assert await runs_of(api, "web") == []


async def test_keys_are_scoped_to_the_caller(api: Api) -> None:
    mine = await trigger(api, "shared-key", {}, who="deployer")
    theirs = await trigger(api, "shared-key", {}, who="deployer2")
    assert mine.status == theirs.status == 202
    assert "Idempotent-Replayed" not in theirs.headers
    assert mine.json["id"] != theirs.json["id"]
    assert theirs.json["triggered_by"]["principal"] == "deployer2"
    assert len(await runs_of(api, "quick")) == 2


async def test_a_repeat_while_the_first_is_still_processing_is_409(api: Api) -> None:
    raw = json.dumps({"revision": "abc"}).encode()
    path = "/api/v1/pipelines/quick/runs"
    fingerprint = hashlib.sha256(b"\0".join([b"POST", path.encode(), raw])).hexdigest()
    keys = IdempotencyStore(api.store, timedelta(hours=24))
    claim = await api.db(keys.claim, "deployer", "busy", fingerprint, datetime.now(UTC))
    assert claim.outcome == "new"

    reply = await api.post(path, "deployer", data=raw, headers=keyed("busy"))
    assert_problem(reply, 409, "still being processed")
    assert await runs_of(api, "quick") == []
    # a different body with that key is still a misuse of the key, not "in progress"
    assert_problem(await trigger(api, "busy", {"revision": "xyz"}), 422)


async def test_a_hundred_concurrent_identical_triggers_with_one_key_make_one_run(api: Api) -> None:
    body = {"revision": "0123abc", "parameters": {}}
    replies = await asyncio.gather(*(trigger(api, "one-deploy", body) for _ in range(100)))
    statuses = sorted({r.status for r in replies})
    assert set(statuses) <= {202, 409}, [r.text for r in replies if r.status not in (202, 409)]
    accepted = [r for r in replies if r.status == 202]
    assert accepted
    assert len({r.json["id"] for r in accepted}) == 1
    assert len({r.headers["Location"] for r in accepted}) == 1
    for r in replies:
        if r.status == 409:
            assert_problem(r, 409, "still being processed")
    assert await runs_of(api, "quick") == [accepted[0].json["id"]]

    # once settled, every repeat is a replay of that one run
    later = await trigger(api, "one-deploy", body)
    assert later.status == 202 and later.headers["Idempotent-Replayed"] == "true"
    assert later.json["id"] == accepted[0].json["id"]


async def test_idempotency_applies_to_other_mutations_too(lite: Api) -> None:
    run = await lite.trigger("slow")
    path = f"/runs/{run['id']}/cancel"
    first = await lite.post(path, "deployer", json={"reason": "x"}, headers={"Idempotency-Key": "stop"})
    again = await lite.post(path, "deployer", json={"reason": "x"}, headers={"Idempotency-Key": "stop"})
    assert first.status == again.status == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json == first.json
    # without the key, the second cancel is refused as the state does not allow it
    assert_problem(await lite.post(path, "deployer", json={"reason": "x"}), 409, "canceled")


async def test_a_refusal_is_remembered_like_any_response(lite: Api) -> None:
    headers = {"Idempotency-Key": "bad-ref"}
    body = {"parameters": {"ref": "nope"}}
    first = await lite.post("/pipelines/web/runs", "deployer", json=body, headers=headers)
    again = await lite.post("/pipelines/web/runs", "deployer", json=body, headers=headers)
    assert_problem(first, 422, "ref")
    assert again.status == 422 and again.json == first.json


async def test_an_invalid_idempotency_key_is_400(lite: Api) -> None:
    for key in ("has space", "x" * 256, "caf\u00e9"):
        reply = await lite.post(
            "/pipelines/quick/runs",
            "deployer",
            json={},
            headers={"Idempotency-Key": key.encode().decode("latin-1")},
        )
        assert_problem(reply, 400, "Idempotency-Key")
    assert await runs_of(lite, "quick") == []
