"""Outgoing webhooks in ``/metrics``: each attempt by outcome, and how long a delivered message
waited in the outbox."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime

from tests.metrics.scrape import TOKEN, fetch
from tests.webhooks.conftest import Receiver, StartHooks, settle, subscribe, utc, worker

Receivers = Callable[[], Awaitable[Receiver]]


async def test_attempts_and_the_lag_of_delivered_messages_are_counted(
    db_url: str, start_hooks: StartHooks, receivers: Receivers
) -> None:
    api = await start_hooks(db_url, metrics_token=TOKEN)
    receiver = await receivers()
    receiver.script.append(503)
    hook = await subscribe(api, receiver, ["run.finished"])
    before = await fetch(api.client)
    await settle(api, (await api.trigger("quick"))["id"])

    assert [o.status for o in await worker(api).step(utc())] == [503]
    (pending,) = (await api.get(f"/webhooks/{hook['id']}/deliveries", "admin")).json["items"]
    due = datetime.fromisoformat(pending["next_attempt_at"])
    assert [o.ok for o in await worker(api).step(due)] == [True]

    after = await fetch(api.client)
    attempts = "shipyard_webhook_delivery_attempts_total"
    assert after.delta(before, attempts, outcome="http_error") == 1
    assert after.delta(before, attempts, outcome="delivered") == 1
    assert after.delta(before, attempts, outcome="unreachable") == 0
    assert after.delta(before, "shipyard_webhook_delivery_lag_seconds_count") == 1
    # from the outbox to the 2xx: the failed attempt and the retry included, a few seconds here
    assert 0 < after.delta(before, "shipyard_webhook_delivery_lag_seconds_sum") < 60
