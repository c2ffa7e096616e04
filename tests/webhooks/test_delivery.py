"""Outgoing webhooks against real receivers on loopback: every event type, signed (checked by the
``standardwebhooks`` package), in order per run, retried with backoff, given up, disabled,
redelivered; the worker is stepped at chosen times, so hours of backoff take no time."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import ValidationError

from bot.config import Settings
from bot.webhooks.service import Config, retry_delay
from storage.webhooks import DELIVERY, WebhookStore
from tests.api.conftest import Api, assert_problem
from tests.webhooks.conftest import (
    Receiver,
    StartHooks,
    drain,
    housekeeping,
    settle,
    subscribe,
    utc,
    worker,
)

Receivers = Callable[[], Awaitable[Receiver]]
ALL = ["run.started", "stage.finished", "deployment.finished", "gate.waiting", "gate.decided", "run.finished"]


async def _deliveries(api: Api, hook: dict[str, Any], **query: str) -> list[dict[str, Any]]:
    suffix = "&".join(f"{k}={v}" for k, v in query.items())
    reply = await api.get(f"/webhooks/{hook['id']}/deliveries?{suffix}", "admin")
    assert reply.status == 200, reply.text
    return reply.json["items"]  # type: ignore[no-any-return]


async def test_every_event_type_arrives_signed_and_in_order(
    db_url: str, start_hooks: StartHooks, receivers: Receivers
) -> None:
    api = await start_hooks(db_url)
    receiver = await receivers()
    hook = await subscribe(api, receiver, ALL)
    assert hook["secret"].startswith("whsec_") and hook["status"] == "active"
    assert "secret" not in (await api.get(f"/webhooks/{hook['id']}", "admin")).json  # shown once

    run = await api.trigger("gated")
    await api.wait_status(run["id"], "waiting")
    assert (await api.post(f"/runs/{run['id']}/gates/production/approve", "approver")).status == 200
    await settle(api, run["id"])
    await drain(api)

    assert receiver.types(run["id"]) == [
        "run.started",
        "stage.finished",
        "gate.waiting",
        "gate.decided",
        "stage.finished",
        "deployment.finished",
        "run.finished",
    ]
    got = {r.type + ":" + r.payload["data"].get("stage", {}).get("name", ""): r for r in receiver.delivered}
    decided = got["gate.decided:production"].payload["data"]
    assert decided["gate"]["status"] == "approved" and decided["gate"]["decided_by"] == "approver"
    deployed = got["deployment.finished:production"].payload["data"]["deployment"]
    assert deployed["environment"] == "production" and deployed["status"] == "succeeded"
    finished = got["run.finished:"].payload
    assert finished["data"]["run"]["ref"] == "gated#1" and finished["data"]["event"]["to"] == "succeeded"
    assert finished["data"]["run"]["url"].endswith(f"/api/v1/runs/{run['id']}")
    ids = [r.msg_id for r in receiver.delivered]
    assert len(set(ids)) == len(ids) == 7
    assert all(r.headers["webhook-id"] == r.msg_id for r in receiver.delivered)

    listed = await _deliveries(api, hook)
    assert len(listed) == 7 and {d["state"] for d in listed} == {"delivered"}
    detail = (await api.get(f"/webhooks/{hook['id']}/deliveries/{listed[0]['id']}", "admin")).json
    assert json.loads(detail["body"]) == receiver.delivered[-1].payload  # exactly what was signed
    assert [a["status"] for a in detail["attempt_log"]] == [200]
    assert detail["attempt_log"][0]["request_headers"]["webhook-id"] == detail["msg_id"]


@pytest.mark.parametrize(
    ("setting", "largest"), [("webhook_keep_days", 3650), ("webhook_disable_after_hours", 87600)]
)
def test_a_time_too_long_to_count_with_is_a_settings_error_not_a_crash_at_startup(
    setting: str, largest: int
) -> None:
    """A huge number meant as "keep them forever" overflowed ``timedelta`` when the worker started."""
    for huge in (1e9, float("inf")):
        with pytest.raises(ValidationError, match=setting):
            Settings(**{setting: huge})
    config = Config.of(Settings(**{setting: largest}))
    assert utc() - config.keep < utc() and utc() - config.failing_for < utc()


async def test_a_failing_receiver_is_retried_with_growing_jittered_waits(
    sqlite_url: str, start_hooks: StartHooks, receivers: Receivers
) -> None:
    api = await start_hooks(sqlite_url)
    receiver = await receivers()
    receiver.script.extend([500, 503, 502])
    hook = await subscribe(api, receiver, ["run.finished"])
    worker(api).rng = random.Random(3)
    await settle(api, (await api.trigger("quick"))["id"])

    at = utc()
    caps = [5, 30, 120]
    for n, cap in enumerate(caps, start=1):
        sent = await worker(api).step(at)
        assert [o.status for o in sent] == [receiver.received[-1].answered]
        (pending,) = await _deliveries(api, hook)
        assert pending["state"] == "pending" and pending["attempts"] == n
        due = datetime.fromisoformat(pending["next_attempt_at"])
        waited = (due - at).total_seconds()
        assert 0 < waited <= cap + 1, (n, waited)  # below the step for this attempt (full jitter)
        assert await worker(api).step(due - timedelta(milliseconds=1)) == []  # not before it is due
        at = due
    assert [o.ok for o in await worker(api).step(at)] == [True]
    (done,) = await _deliveries(api, hook)
    assert done["state"] == "delivered" and done["attempts"] == 4 and done["last_status"] == 200
    detail = (await api.get(f"/webhooks/{hook['id']}/deliveries/{done['id']}", "admin")).json
    assert [a["status"] for a in detail["attempt_log"]] == [500, 503, 502, 200]
    assert len({r.msg_id for r in receiver.received}) == 1  # one message, four attempts


def test_the_retry_schedule_is_full_jitter_below_each_step_then_gives_up() -> None:
    rng = random.Random(1)
    schedule = (5.0, 30.0, 3600.0)
    for attempt, cap in enumerate(schedule, start=1):
        waits = [retry_delay(attempt, schedule, rng) for _ in range(2000)]
        assert all(w is not None and 0 <= w <= cap for w in waits)
        mean = sum(w for w in waits if w is not None) / len(waits)
        assert 0.4 * cap < mean < 0.6 * cap  # spread over the whole range, not bunched at the top
    assert retry_delay(len(schedule) + 1, schedule, rng) is None


async def test_one_subscriptions_backlog_takes_no_more_than_its_share_of_the_slots(
    db_url: str, start_hooks: StartHooks, receivers: Receivers
) -> None:
    api = await start_hooks(db_url)
    sender = worker(api)
    sender.config = dataclasses.replace(sender.config, concurrency=4, per_webhook=2)
    dead, alive = await receivers(), await receivers()
    dead.default = "silent"
    await subscribe(api, dead, ["run.finished"])
    for _ in range(6):  # six runs: six messages due at once, each the head of its run
        await settle(api, (await api.trigger("quick"))["id"])
    await sender.pump(utc())
    await subscribe(api, alive, ["run.finished"])
    for _ in range(2):
        await settle(api, (await api.trigger("quick"))["id"])

    await sender.pump(utc())
    await sender._launch(utc())  # the dead receiver's messages are due first
    await sender._launch(utc())
    in_flight = Counter(f.claimed.url for f in sender._flights.values())
    assert in_flight == {dead.url: 2, alive.url: 2}
    await alive.wait_for(2)
    dead.release.set()
    await asyncio.gather(*(f.task for f in list(sender._flights.values())))


async def test_a_subscription_at_its_share_of_the_slots_lets_the_sender_rest(
    db_url: str, start_hooks: StartHooks, receivers: Receivers
) -> None:
    """Its other due deliveries cannot be claimed until one of its own lands (which wakes the
    sender): looking again every 20 ms meant an empty claim transaction 50 times a second."""
    api = await start_hooks(db_url)
    sender = worker(api)
    sender.config = dataclasses.replace(sender.config, concurrency=4, per_webhook=2)
    dead = await receivers()
    dead.default = "silent"
    await subscribe(api, dead, ["run.finished"])
    for _ in range(4):
        await settle(api, (await api.trigger("quick"))["id"])
    await sender.pump(utc())
    await sender._launch(utc())
    assert len(sender._flights) == 2  # its share, with two more of its deliveries due now
    assert await sender._wait(5.0) == 5.0
    dead.release.set()
    await asyncio.gather(*(f.task for f in list(sender._flights.values())))
    assert not sender._flights and await sender._wait(5.0) < 1  # landed: the rest are due at once


async def test_a_runs_messages_wait_for_the_one_before_them_but_other_runs_go_on(
    db_url: str, start_hooks: StartHooks, receivers: Receivers
) -> None:
    api = await start_hooks(db_url)
    receiver = await receivers()
    await subscribe(api, receiver, ["stage.finished", "run.finished"])
    first = await api.trigger("deploy")
    await settle(api, first["id"])
    second = await api.trigger("deploy")
    await settle(api, second["id"])

    receiver.rule = lambda p: 500 if p["data"]["run"]["id"] == first["id"] else None
    at = utc()
    await drain(api, at)
    assert receiver.types(second["id"]) == ["stage.finished", "stage.finished", "run.finished"]
    tried = [r.payload["data"]["run"]["id"] for r in receiver.received]
    assert tried.count(first["id"]) == 1  # only the first run's first message, never a later one

    receiver.rule = None
    await drain(api, at + timedelta(hours=1))
    assert receiver.types(first["id"]) == ["stage.finished", "stage.finished", "run.finished"]
    stages = [r.payload["data"]["stage"]["name"] for r in receiver.delivered if r.type == "stage.finished"]
    assert stages == ["build", "staging", "build", "staging"]


async def test_a_message_given_up_lets_the_next_one_of_its_run_go(
    sqlite_url: str, start_hooks: StartHooks, receivers: Receivers
) -> None:
    api = await start_hooks(sqlite_url, webhook_retry_seconds=[1, 1])
    receiver = await receivers()
    hook = await subscribe(api, receiver, ["run.started", "run.finished"])
    run = await api.trigger("quick")
    await settle(api, run["id"])
    receiver.rule = lambda p: 500 if p["type"] == "run.started" else None

    at = utc()
    for _ in range(3):  # the first attempt and both retries fail
        await drain(api, at)
        at += timedelta(seconds=2)
    await drain(api, at)
    given_up, delivered = sorted(await _deliveries(api, hook), key=lambda d: d["id"])
    assert (given_up["event_type"], given_up["state"], given_up["attempts"]) == ("run.started", "failed", 3)
    assert given_up["last_error"] == "HTTP 500" and given_up["finished_at"] is not None
    assert (delivered["event_type"], delivered["state"]) == ("run.finished", "delivered")
    assert receiver.types() == ["run.finished"]


async def test_a_subscription_that_keeps_failing_is_disabled_and_its_owner_told(
    db_url: str, start_hooks: StartHooks, receivers: Receivers
) -> None:
    api = await start_hooks(db_url, webhook_disable_after_failures=3)
    receiver = await receivers()
    receiver.default = 500
    hook = await subscribe(api, receiver, ["run.finished"])
    for _ in range(3):
        await settle(api, (await api.trigger("quick"))["id"])

    at = utc()
    await drain(api, at)
    assert len(receiver.received) == 3
    found = (await api.get(f"/webhooks/{hook['id']}", "admin")).json
    assert found["status"] == "disabled" and found["consecutive_failures"] == 3
    assert "3 deliveries in a row failed (last: HTTP 500)" in found["status_reason"]
    audit = (await api.get("/audit?action=disable_webhook", "admin")).json["items"]
    assert [(a["target"], a["detail"]["owner"]) for a in audit] == [(f"webhook {hook['id']}", "admin")]

    await drain(api, at + timedelta(hours=3))  # retries are due, but it is disabled
    assert len(receiver.received) == 3

    receiver.default = 200
    enabled = await api.post(f"/webhooks/{hook['id']}/enable", "admin")
    assert enabled.status == 200 and enabled.json["status"] == "active"
    assert enabled.json["consecutive_failures"] == 0
    await drain(api)
    assert len(receiver.delivered) == 3
    assert_problem(await api.post(f"/webhooks/{hook['id']}/enable", "admin"), 409, "active → active refused")


async def test_a_day_of_failures_disables_a_subscription_even_below_the_count(
    sqlite_url: str, start_hooks: StartHooks, receivers: Receivers
) -> None:
    api = await start_hooks(sqlite_url, webhook_retry_seconds=[3600] * 30)
    receiver = await receivers()
    receiver.default = 503
    hook = await subscribe(api, receiver, ["run.finished"])
    await settle(api, (await api.trigger("quick"))["id"])
    at = utc()
    await worker(api).step(at)
    await worker(api).step(at + timedelta(hours=12))
    assert (await api.get(f"/webhooks/{hook['id']}", "admin")).json["status"] == "active"
    await worker(api).step(at + timedelta(hours=25))
    found = (await api.get(f"/webhooks/{hook['id']}", "admin")).json
    assert found["status"] == "disabled" and "every delivery failed for 25 h" in found["status_reason"]
    assert found["consecutive_failures"] == 3


async def test_410_gone_disables_at_once(
    sqlite_url: str, start_hooks: StartHooks, receivers: Receivers
) -> None:
    api = await start_hooks(sqlite_url)
    receiver = await receivers()
    receiver.default = 410
    hook = await subscribe(api, receiver, ["run.finished"])
    await settle(api, (await api.trigger("quick"))["id"])
    await drain(api)
    found = (await api.get(f"/webhooks/{hook['id']}", "admin")).json
    assert found["status"] == "disabled" and found["status_reason"] == "the receiver answered 410 Gone"


async def test_a_delivery_is_redelivered_with_the_same_message_id(
    db_url: str, start_hooks: StartHooks, receivers: Receivers
) -> None:
    api = await start_hooks(db_url)
    receiver = await receivers()
    hook = await subscribe(api, receiver, ["run.finished"])
    await settle(api, (await api.trigger("quick"))["id"])
    await drain(api)
    (original,) = await _deliveries(api, hook)

    again = await api.post(f"/webhooks/{hook['id']}/deliveries/{original['id']}/redeliver", "admin")
    assert again.status == 202, again.text
    assert again.json["msg_id"] == original["msg_id"] and again.json["redelivery_of"] == original["id"]
    assert_problem(
        await api.post(f"/webhooks/{hook['id']}/deliveries/{original['id']}/redeliver", "admin"),
        409,
        "already queued again",
    )
    assert_problem(
        await api.post(f"/webhooks/{hook['id']}/deliveries/{again.json['id']}/redeliver", "admin"),
        409,
        "still pending",
    )
    await drain(api)
    assert [r.msg_id for r in receiver.delivered] == [original["msg_id"]] * 2
    assert [d["state"] for d in await _deliveries(api, hook)] == ["delivered", "delivered"]
    assert_problem(await api.post(f"/webhooks/{hook['id']}/deliveries/999999/redeliver", "admin"), 404)
    assert_problem(await api.get(f"/webhooks/{hook['id']}/deliveries/nope", "admin"), 404)


async def test_an_answer_with_nul_bytes_is_recorded_and_does_not_hold_up_the_others(
    db_url: str, start_hooks: StartHooks, receivers: Receivers
) -> None:
    """PostgreSQL stores no NUL in text: the attempt is recorded with U+FFFD instead, and so are
    the other subscriptions' attempts written in the same transaction."""
    api = await start_hooks(db_url)

    async def garbled(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=500, body=b"oops\x00\xff")

    app = web.Application()
    app.router.add_post("/hook", garbled)
    hostile = TestServer(app, host="127.0.0.1")
    await hostile.start_server()
    try:
        made = await api.post(
            "/webhooks", json={"url": str(hostile.make_url("/hook")), "events": ["run.started"]}
        )
        assert made.status == 201, made.text
        receiver = await receivers()
        polite = await subscribe(api, receiver, ["run.started"])
        await settle(api, (await api.trigger("quick"))["id"])
        assert len(await worker(api).step(utc())) == 2
    finally:
        await hostile.close()
    (failed,) = await _deliveries(api, made.json)
    assert (failed["state"], failed["attempts"], failed["last_status"]) == ("pending", 1, 500)
    detail = await api.get(f"/webhooks/{made.json['id']}/deliveries/{failed['id']}", "admin")
    assert [a["response"] for a in detail.json["attempt_log"]] == ["oops\ufffd\ufffd"]
    assert [d["state"] for d in await _deliveries(api, polite)] == ["delivered"]
    assert receiver.types() == ["run.started"]


async def test_a_silent_receiver_times_out_and_is_retried_when_it_comes_back(
    sqlite_url: str, start_hooks: StartHooks, receivers: Receivers
) -> None:
    api = await start_hooks(sqlite_url, webhook_timeout_seconds=0.3)
    receiver = await receivers()
    receiver.script.append("silent")
    hook = await subscribe(api, receiver, ["run.finished"])
    await settle(api, (await api.trigger("quick"))["id"])
    at = utc()
    (silent,) = await worker(api).step(at)
    assert not silent.ok and silent.error == "no answer within 0.3 s" and silent.status is None
    await drain(api, at + timedelta(minutes=1))
    (done,) = await _deliveries(api, hook)
    assert done["state"] == "delivered" and done["attempts"] == 2
    assert len(receiver.delivered) == 1


async def test_filters_by_pipeline_and_environment(
    sqlite_url: str, start_hooks: StartHooks, receivers: Receivers
) -> None:
    api = await start_hooks(sqlite_url)
    by_pipeline, by_environment = await receivers(), await receivers()
    await subscribe(api, by_pipeline, ["run.finished"], pipeline="deploy")
    await subscribe(api, by_environment, ["stage.finished", "deployment.finished"], environment="staging")
    for name in ("quick", "deploy"):
        await settle(api, (await api.trigger(name))["id"])
    await drain(api)
    assert [r.payload["data"]["run"]["pipeline"] for r in by_pipeline.delivered] == ["deploy"]
    assert [(r.type, r.payload["data"]["stage"]["environment"]) for r in by_environment.delivered] == [
        ("stage.finished", "staging"),
        ("deployment.finished", "staging"),
    ]


async def test_urls_that_lead_inside_are_refused_at_registration(
    sqlite_url: str, start_hooks: StartHooks
) -> None:
    api = await start_hooks(sqlite_url, webhook_allow=[])
    for url, why in (
        ("http://127.0.0.1:9/hook", "loopback"),
        ("http://10.1.2.3/hook", "private"),
        ("http://169.254.169.254/latest/meta-data", "cloud metadata"),
        ("http://[::1]:9/hook", "loopback"),
        ("http://[::ffff:192.168.0.1]/hook", "private"),
        ("http://localhost:9/hook", "loopback"),
        ("http://user:pw@example.com/hook", "url"),
    ):
        reply = await api.post("/webhooks", json={"url": url, "events": ["run.finished"]})
        assert_problem(reply, 422, why)
    assert (await api.get("/webhooks", "admin")).json["items"] == []


async def test_a_url_that_does_not_parse_is_refused_not_a_server_error(
    sqlite_url: str, start_hooks: StartHooks
) -> None:
    """Bracketed addresses, ports and IDNA labels pass the body's pattern and are only checked
    as the URL is parsed."""
    api = await start_hooks(sqlite_url)
    for url, why in (
        ("http://[not-an-address]/hook", "not a valid URL"),
        ("http://127.0.0.1:99999/hook", "not a valid URL"),
        ("http://127.0.0.1:-1/hook", "not a valid URL"),
        ("http://hooks.example:https/hook", "not a valid URL"),
        ("http://xn--/hook", "not a valid URL"),
        ("http://127.0.0.1:0/hook", "port 0"),
    ):
        reply = await api.post("/webhooks", json={"url": url, "events": ["run.finished"]})
        assert_problem(reply, 422, why)
    assert (await api.get("/webhooks", "admin")).json["items"] == []


async def test_the_policy_holds_at_connect_time_too(
    sqlite_url: str, start_hooks: StartHooks, receivers: Receivers
) -> None:
    """Subscriptions that passed registration (before the allow-list changed, or before their
    name resolved somewhere else) are refused when the worker connects."""
    api = await start_hooks(sqlite_url, webhook_allow=[])
    receiver = await receivers()
    webhook_store = WebhookStore(api.store)
    assert receiver.server is not None
    for url in (receiver.url, f"http://localhost:{receiver.server.port}/hook"):
        await api.db(
            lambda u=url: webhook_store.create(
                url=u,
                events=["run.finished"],
                pipeline=None,
                environment=None,
                description="",
                secret="whsec_" + "A" * 44,
                owner="admin",
                now=utc(),
            )
        )
    await settle(api, (await api.trigger("quick"))["id"])
    outcomes = await worker(api).step(utc())
    assert len(outcomes) == 2 and not any(o.ok for o in outcomes)
    assert all(o.error.startswith("refused: ") and "loopback" in o.error for o in outcomes), outcomes
    assert receiver.received == []  # nothing reached it


async def test_only_admins_manage_webhooks_and_bad_requests_are_refused(
    sqlite_url: str, start_hooks: StartHooks, receivers: Receivers
) -> None:
    api = await start_hooks(sqlite_url)
    receiver = await receivers()
    body = {"url": receiver.url, "events": ["run.finished"]}
    assert_problem(await api.post("/webhooks", "deployer", json=body), 403)
    assert_problem(await api.get("/webhooks", "viewer"), 403)
    assert_problem(await api.post("/webhooks", json={**body, "events": ["run.exploded"]}), 422, "events")
    assert_problem(await api.post("/webhooks", json={**body, "events": []}), 422)
    assert_problem(await api.post("/webhooks", json={**body, "pipeline": "nope"}), 404, "no pipeline")
    assert_problem(await api.post("/webhooks", json={**body, "url": "ftp://x.example/"}), 422)
    hook = await subscribe(api, receiver, ["run.finished"])
    gone = await api.call("DELETE", f"/webhooks/{hook['id']}")
    assert gone.status == 200 and gone.json["status"] == "deleted"
    assert_problem(await api.get(f"/webhooks/{hook['id']}", "admin"), 404)
    assert_problem(await api.get(f"/webhooks/{hook['id']}/deliveries", "admin"), 404)
    await settle(api, (await api.trigger("quick"))["id"])
    assert await drain(api) == []  # nothing is sent to a deleted subscription


async def test_the_background_worker_delivers_without_being_stepped(
    db_url: str, start_hooks: StartHooks, receivers: Receivers
) -> None:
    api = await start_hooks(db_url, webhook_deliver=True, webhook_retry_seconds=[0.2, 0.2])
    receiver = await receivers()
    receiver.script.append(500)  # the first attempt fails: the retry comes by itself
    await subscribe(api, receiver, ["run.started", "stage.finished", "run.finished"])
    run = await api.trigger("deploy")
    await settle(api, run["id"])
    await receiver.wait_for(4)
    assert receiver.types(run["id"]) == ["run.started", "stage.finished", "stage.finished", "run.finished"]


async def test_a_new_subscription_hears_from_then_on_not_history(
    sqlite_url: str, start_hooks: StartHooks, receivers: Receivers
) -> None:
    api = await start_hooks(sqlite_url)
    early, late = await receivers(), await receivers()
    await subscribe(api, early, ["run.finished"])
    before = await api.trigger("quick")
    await settle(api, before["id"])
    await drain(api)
    await subscribe(api, late, ["run.finished"])
    after = await api.trigger("quick")
    await settle(api, after["id"])
    await drain(api)
    assert [r.payload["data"]["run"]["id"] for r in early.delivered] == [before["id"], after["id"]]
    assert [r.payload["data"]["run"]["id"] for r in late.delivered] == [after["id"]]


async def test_finished_deliveries_are_deleted_after_their_keeping_time_open_ones_never(
    db_url: str, start_hooks: StartHooks, receivers: Receivers
) -> None:
    api = await start_hooks(db_url, webhook_keep_days=30)
    good, bad = await receivers(), await receivers()
    delivered_hook = await subscribe(api, good, ["run.started", "run.finished"])
    pending_hook = await subscribe(api, bad, ["run.finished"])
    bad.rule = lambda p: 500  # never takes it: the delivery stays open, retried for days
    await settle(api, (await api.trigger("quick"))["id"])
    at = utc()
    await drain(api, at)
    assert {d["state"] for d in await _deliveries(api, delivered_hook)} == {"delivered"}
    (open_one,) = await _deliveries(api, pending_hook)
    assert open_one["state"] == "pending"

    not_yet = await housekeeping(api).sweep(at + timedelta(days=29))
    assert not_yet.webhook_deliveries == 0  # not old enough yet
    assert len(await _deliveries(api, delivered_hook)) == 2
    assert (await housekeeping(api).sweep(at + timedelta(days=31))).webhook_deliveries == 2
    assert await _deliveries(api, delivered_hook) == []
    assert [d["id"] for d in await _deliveries(api, pending_hook)] == [open_one["id"]]  # kept, attempts too
    detail = (await api.get(f"/webhooks/{pending_hook['id']}/deliveries/{open_one['id']}", "admin")).json
    assert [a["status"] for a in detail["attempt_log"]] == [500]


async def test_a_deleted_subscriptions_open_deliveries_are_given_up_never_sent_and_pruned(
    db_url: str, start_hooks: StartHooks, receivers: Receivers
) -> None:
    api = await start_hooks(db_url, webhook_keep_days=30)
    waiting, in_flight = await receivers(), await receivers()
    waiting_hook = await subscribe(api, waiting, ["run.finished"])
    in_flight_hook = await subscribe(api, in_flight, ["run.finished"])
    store = WebhookStore(api.store)
    waiting.rule = lambda p: 500  # retried later: the delivery waits, pending
    # deleted while its delivery is being sent: the failed attempt must not queue a retry
    in_flight.rule = lambda p: store.change_status(in_flight_hook["id"], "deleted", "test", utc()) and 500
    await settle(api, (await api.trigger("quick"))["id"])
    at = utc()
    await drain(api, at)
    (pending,) = await _deliveries(api, waiting_hook)
    assert pending["state"] == "pending"
    assert (await api.call("DELETE", f"/webhooks/{waiting_hook['id']}")).status == 200

    with api.store.engine.connect() as conn:
        rows = conn.execute(sa.select(DELIVERY.c.webhook_id, DELIVERY.c.state, DELIVERY.c.last_error)).all()
    assert sorted((w, s) for w, s, _ in rows) == sorted(
        [(waiting_hook["id"], "failed"), (in_flight_hook["id"], "failed")]
    ), rows
    assert all("subscription was deleted" in error for *_, error in rows)
    assert await drain(api, at + timedelta(days=2)) == []  # nothing is sent any more
    assert len(waiting.received) == len(in_flight.received) == 1
    assert (await housekeeping(api).sweep(at + timedelta(days=31))).webhook_deliveries == 2


async def test_a_subscription_to_an_environment_nothing_deploys_to_is_refused(
    sqlite_url: str, start_hooks: StartHooks, receivers: Receivers
) -> None:
    """A typo in the filter would otherwise make a subscription that never hears anything."""
    api = await start_hooks(sqlite_url, environments={"qa": {}})
    receiver = await receivers()
    body = {"url": receiver.url, "events": ["run.finished"]}
    typo = await api.post("/webhooks", json={**body, "environment": "prodution"})
    assert_problem(typo, 404, "no environment 'prodution'", "production", "staging")
    assert (await api.get("/webhooks", "admin")).json["items"] == []
    for known in ("production", "qa"):  # deployed to by a pipeline, or declared in the settings
        made = await api.post("/webhooks", json={**body, "environment": known})
        assert made.status == 201 and made.json["environment"] == known, made.text
