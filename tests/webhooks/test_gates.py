"""External gates: the external security scanner case. The gate's ``gate.waiting`` message tells
its subscriber where to call back; the subscriber's signed verdict clears or fails the gate;
nobody else's does; a gate nobody calls back times out."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import standardwebhooks
from yarl import URL

from tests.api.conftest import Api, Reply, assert_problem
from tests.webhooks.conftest import Receiver, StartHooks, drain, settle, subscribe

Receivers = Callable[[], Awaitable[Receiver]]


async def call_back(api: Api, url: str, secret: str, body: Any, msg_id: str | None = None) -> Reply:
    """POST a verdict as a subscriber would: signed with its secret (Standard Webhooks)."""
    text = json.dumps(body)
    msg_id, at = msg_id or f"cb_{uuid.uuid4().hex}", datetime.now(UTC)
    headers = {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": standardwebhooks.Webhook(secret).sign(msg_id, at, text),
    }
    target = URL(url)
    path = target.raw_path + (f"?{target.raw_query_string}" if target.raw_query_string else "")
    return await api.call("POST", path, None, data=text, headers=headers)


async def waiting_for_scan(api: Api, receiver: Receiver) -> tuple[dict[str, Any], dict[str, Any]]:
    run = await api.trigger("scanned")
    await api.wait_status(run["id"], "waiting")
    await drain(api)
    (message,) = [r for r in receiver.delivered if r.type == "gate.waiting"]
    return run, message.payload["data"]


async def test_the_subscriber_clears_an_external_gate_by_calling_back(
    db_url: str, start_hooks: StartHooks, receivers: Receivers
) -> None:
    api = await start_hooks(db_url, public_url="https://shipyard.example.com")
    scanner = await receivers()
    hook = await subscribe(api, scanner, ["gate.waiting", "gate.decided", "run.finished"])
    run, data = await waiting_for_scan(api, scanner)
    gate = data["gate"]
    assert gate["kind"] == "external" and gate["stage"] == "production" and gate["status"] == "open"
    callback = data["callback"]
    assert callback["url"] == (
        f"https://shipyard.example.com/api/v1/runs/{run['id']}/gates/{gate['id']}/callback?webhook={hook['id']}"
    )

    cleared = await call_back(api, callback["url"], hook["secret"], {"passed": True, "detail": "0 findings"})
    assert cleared.status == 200, cleared.text
    done = await settle(api, run["id"])
    gate_out = done["stages"][1]["gate"]
    assert gate_out["status"] == "approved" and gate_out["decided_by"] == f"webhook:{hook['id']}"
    assert gate_out["reason"] == "0 findings" and gate_out["kind"] == "external"
    assert_problem(  # the same verdict again: the gate is decided
        await call_back(api, callback["url"], hook["secret"], {"passed": True}), 409, "already approved"
    )
    await drain(api)
    assert scanner.types(run["id"]) == ["gate.waiting", "gate.decided", "run.finished"]


async def test_a_failed_scan_fails_the_run_with_what_it_found(
    sqlite_url: str, start_hooks: StartHooks, receivers: Receivers
) -> None:
    api = await start_hooks(sqlite_url)
    scanner = await receivers()
    hook = await subscribe(api, scanner, ["gate.waiting"])
    run, data = await waiting_for_scan(api, scanner)
    verdict = {"passed": False, "detail": "CVE-2026-1234 in libfrob"}
    assert (await call_back(api, data["callback"]["url"], hook["secret"], verdict)).status == 200
    failed = await settle(api, run["id"], "failed")
    gate = failed["stages"][1]["gate"]
    assert gate["status"] == "rejected" and "CVE-2026-1234" in gate["reason"]
    assert [j["status"] for j in failed["stages"][1]["jobs"]] == ["canceled"]  # never ran


async def test_only_the_told_subscriber_with_its_own_signature_may_call_back(
    sqlite_url: str, start_hooks: StartHooks, receivers: Receivers
) -> None:
    api = await start_hooks(sqlite_url)
    scanner, bystander = await receivers(), await receivers()
    hook = await subscribe(api, scanner, ["gate.waiting"])
    other = await subscribe(api, bystander, ["run.finished"])
    run, data = await waiting_for_scan(api, scanner)
    url = data["callback"]["url"]
    verdict = {"passed": True}

    unsigned = await api.call("POST", URL(url).path + "?" + URL(url).query_string, None, json=verdict)
    assert_problem(unsigned, 401, "unsigned")
    assert_problem(await call_back(api, url, other["secret"], verdict), 401, "does not match")
    as_other = url.replace(hook["id"], other["id"])
    assert_problem(await call_back(api, as_other, other["secret"], verdict), 403, "was not sent")
    assert_problem(await call_back(api, url.split("?")[0], hook["secret"], verdict), 400, "?webhook=")
    assert_problem(await call_back(api, url, hook["secret"], {"passed": "yes"}), 422, "passed")
    manual = await api.trigger("gated")
    await api.wait_status(manual["id"], "waiting")
    on_manual = f"/api/v1/runs/{manual['id']}/gates/production/callback?webhook={hook['id']}"
    assert_problem(await call_back(api, on_manual, hook["secret"], verdict), 409, "only external gates")
    assert (await api.run(run["id"]))["status"] == "waiting"  # none of these moved it
    audit = (await api.get("/audit?action=gate_callback", "admin")).json["items"]
    assert len([a for a in audit if a["outcome"] == "rejected"]) == 6


async def test_an_external_gate_nobody_calls_back_times_out(
    sqlite_url: str, start_hooks: StartHooks, receivers: Receivers
) -> None:
    api = await start_hooks(sqlite_url, webhook_deliver=True)
    run = await api.trigger("hurried")
    failed = await settle(api, run["id"], "failed")
    gate = failed["stages"][0]["gate"]
    assert gate["status"] == "timed_out" and "nobody cleared it within 1.0s" in gate["reason"]


async def test_a_captured_callback_sent_again_decides_nothing_more(
    db_url: str, start_hooks: StartHooks, receivers: Receivers
) -> None:
    """The signature does not cover the URL: within its five minutes the same signed verdict
    could be sent to another gate the subscription was told of. A webhook-id is used once."""
    api = await start_hooks(db_url)
    scanner = await receivers()
    hook = await subscribe(api, scanner, ["gate.waiting"])
    first, first_data = await waiting_for_scan(api, scanner)
    second = await api.trigger("scanned")
    await api.wait_status(second["id"], "waiting")
    await drain(api)
    urls = {r.payload["data"]["run"]["id"]: r.payload["data"]["callback"]["url"] for r in scanner.delivered}
    assert urls[first["id"]] == first_data["callback"]["url"] and second["id"] in urls

    cleared = await call_back(api, urls[first["id"]], hook["secret"], {"passed": True}, msg_id="cb_once")
    assert cleared.status == 200, cleared.text
    again = await call_back(api, urls[first["id"]], hook["secret"], {"passed": True}, msg_id="cb_once")
    assert again.status == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json["id"] == first["id"]
    elsewhere = await call_back(api, urls[second["id"]], hook["secret"], {"passed": True}, msg_id="cb_once")
    assert_problem(elsewhere, 409, "webhook-id cb_once was already used for another callback")
    assert (await api.run(second["id"]))["status"] == "waiting"
    await settle(api, first["id"])


async def test_a_callback_sent_again_to_the_same_gate_by_another_name_gets_the_first_answer(
    db_url: str, start_hooks: StartHooks, receivers: Receivers
) -> None:
    """A run is named by its id or its ref (``scanned#1``), a gate by its id or its stage's name:
    however the URL names them, one gate is one request, and a webhook-id sent again to it is
    answered as the first time."""
    api = await start_hooks(db_url)
    scanner = await receivers()
    hook = await subscribe(api, scanner, ["gate.waiting"])
    run, data = await waiting_for_scan(api, scanner)
    url = data["callback"]["url"]
    ref = run["ref"].replace("#", "%23")
    by_ref = url.replace(f"/runs/{run['id']}/gates/{data['gate']['id']}/", f"/runs/{ref}/gates/production/")
    assert by_ref != url and "%23" in by_ref and "?webhook=" in by_ref

    cleared = await call_back(api, by_ref, hook["secret"], {"passed": True}, msg_id="cb_named")
    assert cleared.status == 200, cleared.text
    for target in (by_ref, url):
        again = await call_back(api, target, hook["secret"], {"passed": True}, msg_id="cb_named")
        assert again.status == 200 and again.headers.get("Idempotent-Replayed") == "true", again.text
        assert again.json == cleared.json
    done = await settle(api, run["id"])
    assert done["stages"][1]["gate"]["decided_by"] == f"webhook:{hook['id']}"
