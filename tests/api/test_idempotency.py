"""``Idempotency-Key``: a repeat returns the first response (a final refusal too), a different
body with the same key is 422 (the same JSON written differently is the same body), keys are
scoped to the caller, a repeat while the first is in flight is 409, refusals that may pass are
not kept, a hundred concurrent identical triggers make exactly one run, and a request whose
claim lapsed and was taken over cannot run its command a second time."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from bot import housekeeping
from bot.api import GATEWAY
from bot.api.gateway import HOLD_KEYED_COMMAND
from bot.api.routing import fingerprint
from bot.housekeeping import HOUSEKEEPING
from storage.idempotency import IDEMPOTENCY, IdempotencyStore
from tests.api.conftest import Api, Reply, StartApi, assert_problem
from tests.pipelines import API_PIPELINES


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
    keys = IdempotencyStore(api.store, timedelta(hours=24))
    same = fingerprint("POST", path, b'{"revision":"abc"}')
    claim = await api.db(keys.claim, "deployer", "busy", same, datetime.now(UTC))
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


async def test_a_request_whose_claim_lapsed_and_was_taken_over_does_not_run_a_second_time(
    db_url: str, start_api: StartApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that stops renewing (its database stalled for a whole lease) loses its claim to
    a retry, which runs the trigger; the first request, when it gets through, is fenced out."""
    api = await start_api(db_url, idempotency_lease_seconds=1.0)
    gateway = api.client.app[GATEWAY]
    stalled: list[str] = []

    async def stalled_renewal(caller: str, key: str, holder: str) -> bool:
        stalled.append(holder)
        return True  # as if renewed, but nothing reached the database

    monkeypatch.setattr(gateway, "renew_key", stalled_renewal, raising=True)
    monkeypatch.setenv(HOLD_KEYED_COMMAND, "6")  # the first request works well past its lease
    body = {"revision": "abc"}
    first = asyncio.ensure_future(trigger(api, "lapsed", body))
    while not stalled:  # it claimed the key and tried to renew it
        await asyncio.sleep(0.05)
    monkeypatch.delenv(HOLD_KEYED_COMMAND)

    retry = await trigger(api, "lapsed", body)
    while retry.status == 409 and not first.done():  # until the first claim's lease ran out
        await asyncio.sleep(0.1)
        retry = await trigger(api, "lapsed", body)
    assert not first.done()
    assert retry.status == 202 and "Idempotent-Replayed" not in retry.headers
    assert_problem(await first, 409, "still being processed")
    assert await runs_of(api, "quick") == [retry.json["id"]]
    again = await trigger(api, "lapsed", body)
    assert again.headers["Idempotent-Replayed"] == "true" and again.json["id"] == retry.json["id"]


async def test_idempotency_applies_to_other_mutations_too(api: Api) -> None:
    run = await api.trigger("slow")
    path = f"/runs/{run['id']}/cancel"
    first = await api.post(path, "deployer", json={"reason": "x"}, headers={"Idempotency-Key": "stop"})
    again = await api.post(path, "deployer", json={"reason": "x"}, headers={"Idempotency-Key": "stop"})
    assert first.status == again.status == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json == first.json
    # without the key, the second cancel is refused as the state does not allow it
    assert_problem(await api.post(path, "deployer", json={"reason": "x"}), 409, "canceled")


async def test_the_same_json_written_differently_is_the_same_request(api: Api) -> None:
    first = await trigger(api, "spaced", {"revision": "abc", "parameters": {}})
    assert first.status == 202, first.text
    for text in (
        '{"parameters":{},"revision":"abc"}',
        '{\n  "revision" : "abc",\n  "parameters" : { }\n}\n',
        '{"revision": "\\u0061bc", "parameters": {}}',
    ):
        again = await api.post("/pipelines/quick/runs", "deployer", data=text, headers=keyed("spaced"))
        assert again.status == 202, (text, again.text)
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.json["id"] == first.json["id"]
    assert_problem(await trigger(api, "spaced", {"revision": "abd", "parameters": {}}), 422)
    assert await runs_of(api, "quick") == [first.json["id"]]


async def test_a_final_refusal_is_remembered_like_any_response(api: Api) -> None:
    """A trigger refused because the pipeline is archived stays refused for its key, even once
    the pipeline is back: the key names that request, and it was answered (as Stripe does once
    a request began executing). A new key is a new request."""
    assert (await api.call("DELETE", "/pipelines/quick", "admin")).status == 200
    first = await trigger(api, "archived", {})
    assert_problem(first, 409, "archived")
    assert "Idempotent-Replayed" not in first.headers

    restored = await api.post(
        "/pipelines", "admin", data=API_PIPELINES["quick"], headers={"Content-Type": "text/yaml"}
    )
    assert restored.status == 201, restored.text
    again = await trigger(api, "archived", {})
    assert again.status == 409 and again.json == first.json
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await runs_of(api, "quick") == []
    fresh = await trigger(api, "restored", {})
    assert fresh.status == 202 and await runs_of(api, "quick") == [fresh.json["id"]]

    # a refusal the engine gives for the request itself is the same: kept
    body = {"parameters": {"ref": "nope"}}
    headers = {"Idempotency-Key": "bad-ref"}
    bad = await api.post("/pipelines/web/runs", "deployer", json=body, headers=headers)
    assert_problem(bad, 422, "ref")
    repeat = await api.post("/pipelines/web/runs", "deployer", json=body, headers=headers)
    assert repeat.status == 422 and repeat.json == bad.json
    assert repeat.headers["Idempotent-Replayed"] == "true"


async def test_a_refusal_of_who_is_asking_is_not_kept(api: Api) -> None:
    """403 depends on who the caller is and what it may do, which can change: the key stays
    free, so a repeat is asked again and another body with it is not a misuse of the key."""
    run = await api.trigger("gated")
    await api.wait_status(run["id"], "waiting")
    path = f"/runs/{run['id']}/gates/production/approve"
    headers = {"Idempotency-Key": "not-mine"}
    for comment in ("lgtm", "lgtm", "something else"):
        reply = await api.post(path, "approver2", json={"comment": comment}, headers=headers)
        assert_problem(reply, 403, "approver2")
        assert "Idempotent-Replayed" not in reply.headers
    # the engine audited each attempt: none was answered from the key
    entries = (await api.get("/audit?actor=approver2&limit=50", "admin")).json["items"]
    assert [e["outcome"] for e in entries] == ["rejected"] * 3


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


async def _stored_keys(api: Api) -> set[str]:
    def read() -> set[str]:
        with api.store.engine.connect() as conn:
            return set(conn.execute(sa.select(IDEMPOTENCY.c.key)).scalars())

    return set(await api.db(read))


async def test_the_hourly_housekeeping_purges_expired_keys_and_keeps_live_ones(api: Api) -> None:
    await api.client.app[HOUSEKEEPING].stop()  # (its pass at start would race the one counted here)
    live = await trigger(api, "live", {"revision": "abc"})
    assert live.status == 202
    keys = IdempotencyStore(api.store, timedelta(hours=24))
    long_ago = datetime.now(UTC) - timedelta(hours=25)
    claim = await api.db(keys.claim, "deployer", "expired", "f" * 64, long_ago)
    assert claim.outcome == "new"
    assert await _stored_keys(api) == {"live", "expired"}

    swept = await api.client.app[HOUSEKEEPING].sweep()

    assert swept.idempotency_keys == 1
    assert await _stored_keys(api) == {"live"}
    again = await trigger(api, "live", {"revision": "abc"})
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json["id"] == live.json["id"]


async def test_a_housekeeping_pass_deletes_a_bounded_number_of_keys(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(housekeeping, "BATCH", 2, raising=True)
    monkeypatch.setattr(housekeeping, "MAX_BATCHES", 2, raising=True)
    # (the service's own pass, due at start, would race the two counted here on a slow machine)
    await api.client.app[HOUSEKEEPING].stop()
    keys = IdempotencyStore(api.store, timedelta(hours=24))
    long_ago = datetime.now(UTC) - timedelta(hours=25)
    for n in range(5):
        await api.db(keys.claim, "deployer", f"old-{n}", "f" * 64, long_ago)

    first = await api.client.app[HOUSEKEEPING].sweep()
    second = await api.client.app[HOUSEKEEPING].sweep()

    assert (first.idempotency_keys, second.idempotency_keys) == (4, 1)
    assert await _stored_keys(api) == set()


async def test_a_run_and_a_gate_named_another_way_under_one_key_are_the_same_request(api: Api) -> None:
    """A run is named by its id, an id prefix or its ref, a gate by its id or its stage's name:
    a retry under the same key that names them another way gets the first answer, not a 422."""
    run = await api.trigger("gated")
    run = await api.wait_status(run["id"], "waiting")
    gate = next(s["gate"] for s in run["stages"] if s["gate"] is not None)
    ref = run["ref"].replace("#", "%23")
    body = {"comment": "ship it"}
    first = await api.post(
        f"/runs/{run['id']}/gates/{gate['id']}/approve",
        "approver",
        json=body,
        headers={"Idempotency-Key": "approve-once"},
    )
    assert first.status == 200, first.text
    for path in (
        f"/runs/{ref}/gates/production/approve",
        f"/runs/{run['id'][:12]}/gates/{gate['id']}/approve",
    ):
        again = await api.post(path, "approver", json=body, headers={"Idempotency-Key": "approve-once"})
        assert again.status == 200, (path, again.text)
        assert again.headers["Idempotent-Replayed"] == "true" and again.json == first.json

    slow = await api.trigger("slow")
    stopped = await api.post(
        f"/runs/{slow['id']}/cancel", "deployer", json={}, headers={"Idempotency-Key": "stop-by-ref"}
    )
    assert stopped.status == 200, stopped.text
    by_ref = await api.post(
        f"/runs/{slow['ref'].replace('#', '%23')}/cancel",
        "deployer",
        json={},
        headers={"Idempotency-Key": "stop-by-ref"},
    )
    assert by_ref.status == 200 and by_ref.headers["Idempotent-Replayed"] == "true", by_ref.text
    other_run = await api.post(
        f"/runs/{run['id']}/cancel", "deployer", json={}, headers={"Idempotency-Key": "stop-by-ref"}
    )
    assert_problem(other_run, 422, "Idempotency-Key")  # another run is another request


async def test_a_key_used_again_after_it_expired_with_another_body_starts_that_run(api: Api) -> None:
    """Once a key's answer is purged, the key may be used afresh (as Stripe and the IETF draft
    allow): another body starts the run it asks for, never answered with the old run of other
    revision; the same body is still the run it started."""
    first = await trigger(api, "reused-later", {"revision": "abc"})
    assert first.status == 202, first.text
    with api.store.engine.begin() as conn:  # (what the hourly housekeeping does after 24 h)
        forgotten = conn.execute(sa.delete(IDEMPOTENCY).where(IDEMPOTENCY.c.key == "reused-later"))
        assert forgotten.rowcount == 1

    other = await trigger(api, "reused-later", {"revision": "def"})
    assert other.status == 202, other.text
    assert other.json["revision"] == "def" and other.json["id"] != first.json["id"]
    with api.store.engine.begin() as conn:
        conn.execute(sa.delete(IDEMPOTENCY).where(IDEMPOTENCY.c.key == "reused-later"))
    same = await trigger(api, "reused-later", {"revision": "abc"})
    assert same.json["id"] == first.json["id"] and same.json["revision"] == "abc"
    assert sorted(await runs_of(api, "quick")) == sorted([first.json["id"], other.json["id"]])
