"""Environment locks over real HTTP: lock (201), someone else's lock (409 saying who, since when,
why, until when), unlock by the holder or an admin only (403 naming the holder), not locked
(404), extend, ask for a handover, an expired lock taken over, bad input, and the audit log."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from storage.locks import LockStore
from tests.api.conftest import Api, assert_problem

LOCK = "/environments/production/lock"


async def audit(api: Api) -> list[dict[str, Any]]:
    """Lock entries, oldest first."""
    reply = await api.get("/audit?limit=200", "admin")
    assert reply.status == 200, reply.text
    return [
        e
        for e in reversed(reply.json["items"])
        if e["target"].endswith("production") or "lock" in e["action"]
    ]


async def test_one_holder_the_others_are_told_who_and_only_the_holder_or_an_admin_unlocks(api: Api) -> None:
    made = await api.post(LOCK, "deployer", json={"reason": "incident 4711", "duration": "2h"})
    assert made.status == 201, made.text
    assert made.headers["Location"] == "/api/v1/environments/production/lock"
    lock = made.json
    assert (lock["environment"], lock["holder"], lock["reason"], lock["kind"]) == (
        "production",
        "deployer",
        "incident 4711",
        "manual",
    )
    since = datetime.fromisoformat(lock["since"])
    assert datetime.fromisoformat(lock["expires_at"]) - since == timedelta(hours=2)
    assert lock["description"].startswith("production is locked by deployer since ")
    expires = since + timedelta(hours=2)  # (after 22:00 UTC it is tomorrow: the date is said too)
    when = f"{expires:%H:%M}" if expires.date() == since.date() else f"{expires:%Y-%m-%d %H:%M}"
    assert lock["description"].endswith(f": incident 4711; expires {when} UTC")

    shown = await api.get(LOCK, "viewer")
    assert shown.status == 200 and shown.json["holder"] == "deployer"
    assert [item["environment"] for item in (await api.get("/locks", "viewer")).json["items"]] == [
        "production"
    ]

    refused = assert_problem(
        await api.post(LOCK, "deployer2", json={"reason": "hotfix"}),
        409,
        "production is locked by deployer since",
        "incident 4711",
        "expires",
    )
    assert refused["holder"] == "deployer" and refused["kind"] == "manual" and refused["expires_at"]

    relocked = await api.post(LOCK, "deployer", json={"reason": "incident 4711, longer", "duration": None})
    assert relocked.status == 200, relocked.text
    assert relocked.json["since"] == lock["since"] and relocked.json["expires_at"] is None

    assert_problem(await api.call("DELETE", LOCK, "deployer2"), 403, "locked by deployer", "Only deployer")
    assert_problem(await api.call("DELETE", LOCK, "viewer"), 403, "viewer")
    assert_problem(await api.post(LOCK, "approver", json={"reason": "x"}), 403, "approver")
    assert (await api.get(LOCK)).json["holder"] == "deployer"  # still held

    gone = await api.call("DELETE", LOCK, "deployer")
    assert gone.status == 200 and gone.json["reason"] == "incident 4711, longer"
    assert_problem(await api.get(LOCK), 404, "production is not locked")
    assert_problem(await api.call("DELETE", LOCK, "deployer"), 404, "production is not locked")
    assert (await api.get("/locks")).json["items"] == []

    assert (await api.post(LOCK, "deployer2", json={"reason": "release"})).status == 201
    assert (await api.call("DELETE", LOCK, "admin")).json["holder"] == "deployer2"  # an admin may

    entries = await audit(api)
    assert [(e["action"], e["actor"], e["outcome"]) for e in entries] == [
        ("lock_environment", "deployer", "accepted"),
        ("lock_environment", "deployer2", "rejected"),
        ("relock_environment", "deployer", "accepted"),
        ("unlock_environment", "deployer2", "rejected"),
        ("unlock_environment", "viewer", "rejected"),  # refused by role, before the lock store
        ("lock_environment", "approver", "rejected"),
        ("unlock_environment", "deployer", "accepted"),
        ("unlock_environment", "deployer", "rejected"),
        ("lock_environment", "deployer2", "accepted"),
        ("unlock_environment", "admin", "accepted"),
    ]
    assert all(e["channel"] == "rest" for e in entries)
    assert entries[0]["reason"] == "incident 4711" and entries[0]["detail"]["holder"] == "deployer"
    assert "locked by deployer" in entries[1]["reason"]


async def test_extend_and_handover(api: Api) -> None:
    lock = (await api.post(LOCK, "deployer", json={"reason": "incident 4711", "duration": "1h"})).json
    assert_problem(
        await api.post(LOCK + "/extend", "deployer2", json={"duration": "1h"}), 403, "Only deployer"
    )
    longer = await api.post(LOCK + "/extend", "deployer", json={"duration": "1h30m"})
    assert longer.status == 200, longer.text
    moved = datetime.fromisoformat(longer.json["expires_at"]) - datetime.fromisoformat(lock["expires_at"])
    assert moved == timedelta(minutes=90)

    assert_problem(await api.post(LOCK + "/handover", "deployer"), 422, "you hold the lock")
    asked = await api.post(LOCK + "/handover", "deployer2")
    assert asked.status == 202, asked.text
    assert asked.json["handover_requested_by"] == "deployer2" and asked.json["holder"] == "deployer"
    assert (await api.get(LOCK)).json["handover_requested_by"] == "deployer2"
    assert [(e["action"], e["actor"], e["outcome"]) for e in await audit(api)] == [
        ("lock_environment", "deployer", "accepted"),
        ("extend_lock", "deployer2", "rejected"),
        ("extend_lock", "deployer", "accepted"),
        ("request_lock_handover", "deployer", "rejected"),
        ("request_lock_handover", "deployer2", "accepted"),
    ]


async def test_an_expired_lock_is_free_and_taken_over(lite: Api) -> None:
    past = datetime.now(UTC) - timedelta(hours=2)
    locks = LockStore(lite.store)
    await lite.db(lambda: locks.acquire("production", "deployer", "forgotten", 3600, past))
    assert_problem(await lite.get(LOCK), 404, "not locked")
    taken = await lite.post(LOCK, "deployer2", json={"reason": "release 1.4"})
    assert taken.status == 201 and taken.json["holder"] == "deployer2"
    assert [e["action"] for e in await audit(lite)][-2:] == ["expire_lock", "lock_environment"]


@pytest.mark.parametrize(
    ("path", "body", "status", "why"),
    [
        ("/environments/prodution/lock", {"reason": "x"}, 404, "no environment 'prodution'"),
        (LOCK, {"reason": "x", "duration": "2hrs"}, 422, "use e.g. 30m, 2h"),
        (LOCK, {"reason": "x", "duration": "2"}, 422, "give '2' a unit"),
        (LOCK, {"reason": "x", "duration": "10s"}, 422, "from 1m to 365d"),
        (LOCK, {"reason": "   "}, 422, "reason"),
        (LOCK, {}, 422, "reason"),
        (LOCK, {"reason": "x", "until": "friday"}, 422, "until"),
        (LOCK, {"reason": 4711}, 422, "reason"),
        (LOCK + "/extend", {"duration": "1h"}, 404, "production is not locked"),
        (LOCK + "/handover", {}, 404, "production is not locked"),
    ],
)
async def test_bad_requests_say_what_to_fix(
    lite: Api, path: str, body: dict[str, Any], status: int, why: str
) -> None:
    assert_problem(await lite.post(path, "deployer", json=body), status, why)
    assert (await lite.get("/locks")).json["items"] == []


async def test_a_lock_without_expiry_cannot_be_extended(lite: Api) -> None:
    assert (
        await lite.post("/environments/staging/lock", "deployer", json={"reason": "load test"})
    ).status == 201
    extend = await lite.post("/environments/staging/lock/extend", "deployer", json={"duration": "1h"})
    assert_problem(extend, 422, "no expiry to extend")
    assert_problem(await lite.post("/environments/staging/lock/extend", "deployer", json={}), 422, "duration")


async def test_the_lock_endpoints_are_documented(lite: Api) -> None:
    paths = (await lite.get("/openapi.json")).json["paths"]
    assert set(paths["/api/v1/environments/{env_id}/lock"]) == {"get", "post", "delete"}
    assert "post" in paths["/api/v1/environments/{env_id}/lock/extend"]
    assert "post" in paths["/api/v1/environments/{env_id}/lock/handover"]
    assert "get" in paths["/api/v1/locks"]


async def test_an_empty_duration_is_refused_not_taken_for_no_expiry(lite: Api) -> None:
    reply = await lite.post("/environments/staging/lock", "deployer", json={"reason": "x", "duration": ""})
    assert_problem(reply, 422, "duration is empty")
