"""Managing webhooks leaves a trail: subscribing, enabling, redelivering and deleting
subscriptions, and creating and deleting incoming triggers, are each in the audit log, accepted or
refused, with the refusal's reason. Over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tests.api.conftest import assert_problem
from tests.webhooks.conftest import Receiver, StartHooks, drain, settle, subscribe
from tests.webhooks.test_incoming import make_trigger

Receivers = Callable[[], Awaitable[Receiver]]


async def test_webhook_and_trigger_management_is_audited_accepted_or_refused(
    db_url: str, start_hooks: StartHooks, receivers: Receivers
) -> None:
    api = await start_hooks(db_url)
    receiver = await receivers()
    hook = await subscribe(api, receiver, ["run.finished"])
    private = {"url": "http://10.1.2.3/hook", "events": ["run.finished"]}
    assert_problem(await api.post("/webhooks", json=private), 422, "url refused")
    await settle(api, (await api.trigger("quick"))["id"])
    await drain(api)
    (delivery,) = (await api.get(f"/webhooks/{hook['id']}/deliveries", "admin")).json["items"]
    deliveries = f"/webhooks/{hook['id']}/deliveries"
    assert (await api.post(f"{deliveries}/{delivery['id']}/redeliver")).status == 202
    assert_problem(await api.post(f"{deliveries}/{delivery['id']}/redeliver"), 409, "already queued")
    assert_problem(await api.post(f"/webhooks/{hook['id']}/enable"), 409)
    assert (await api.call("DELETE", f"/webhooks/{hook['id']}")).status == 200
    assert_problem(await api.call("DELETE", f"/webhooks/{hook['id']}"), 404)
    trigger = await make_trigger(api, "quick", "generic")
    assert_problem(await api.post("/triggers", json={"pipeline": "nope", "kind": "generic"}), 404)
    assert (await api.call("DELETE", f"/triggers/{trigger['id']}")).status == 200
    assert_problem(await api.call("DELETE", f"/triggers/{trigger['id']}"), 404)

    items = (await api.get("/audit?actor=admin&limit=100", "admin")).json["items"]
    trail = [(e["action"], e["outcome"], e["target"]) for e in reversed(items)]
    again = f"{deliveries}/{delivery['id']}/redeliver"
    assert trail == [
        ("create_webhook", "accepted", "/webhooks"),
        ("create_webhook", "rejected", "/webhooks"),
        ("redeliver", "accepted", again),
        ("redeliver", "rejected", again),
        ("enable_webhook", "rejected", f"/webhooks/{hook['id']}/enable"),
        ("delete_webhook", "accepted", f"/webhooks/{hook['id']}"),
        ("delete_webhook", "rejected", f"/webhooks/{hook['id']}"),
        ("create_trigger", "accepted", "/triggers"),
        ("create_trigger", "rejected", "/triggers"),
        ("delete_trigger", "accepted", f"/triggers/{trigger['id']}"),
        ("delete_trigger", "rejected", f"/triggers/{trigger['id']}"),
    ]
    reasons = [e["reason"] for e in reversed(items) if e["outcome"] == "rejected"]
    assert all(reasons) and "url refused" in reasons[0] and "no pipeline 'nope'" in reasons[-2]
