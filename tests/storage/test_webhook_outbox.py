"""The webhook store (``storage.webhooks``) on real SQLite and PostgreSQL, below the worker: where
a new outbox starts reading the log, which deliveries a sender may claim, what happens to the
result of a sender whose claim was taken over, reading deliveries back, and subscriptions and
triggers that are gone."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from core.events import Event
from core.model import RunState
from storage.store import SqlStore
from storage.webhooks import NewDelivery, Outcome, Webhook, WebhookStore

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
SECRET = "whsec_" + "a" * 32


@pytest.fixture
def hooks(db_url: str) -> Iterator[WebhookStore]:
    store = SqlStore(db_url)
    yield WebhookStore(store)
    store.dispose()


def subscribe(hooks: WebhookStore, name: str, now: datetime = T0) -> Webhook:
    return hooks.create(
        url=f"https://example.com/{name}",
        events=["trigger.created"],
        pipeline=None,
        environment=None,
        description=name,
        secret=SECRET,
        owner="alice",
        now=now,
    )


def triggers(event: Event) -> bool:
    return event.name == "trigger.created"


def one_each(events: list[Event], runs: dict[str, RunState], webhooks: list[Webhook]) -> list[NewDelivery]:
    """A message for each event and subscriber (what ``bot.webhooks`` plans, simplified)."""
    return [
        NewDelivery(w.id, f"{e.seq}", f"msg_{e.seq}", e.name, e.seq, e.seq, e.run_id, e.subject_id, "{}")
        for e in events
        for w in webhooks
    ]


def new_trigger(hooks: WebhookStore, pipeline: str = "web") -> str:
    return hooks.create_trigger(
        pipeline=pipeline, kind="generic", description="", secret=SECRET, owner="alice", now=T0
    ).id


def test_a_new_outbox_starts_at_the_end_of_the_log_and_never_replays_history(hooks: WebhookStore) -> None:
    new_trigger(hooks)
    new_trigger(hooks)
    assert hooks.cursor() == 0  # never moved
    read, queued, cursor = hooks.move(triggers, one_each, T0)
    assert (read, queued) == (0, 0) and cursor == hooks.cursor() > 0  # at the end, reading nothing
    hook = subscribe(hooks, "ci")
    later = new_trigger(hooks)
    read, queued, _ = hooks.move(triggers, one_each, T0)
    assert (read, queued) == (2, 1)  # (the subscription's own event, and the trigger)
    (delivery,) = hooks.deliveries(hook.id, None, 10)
    assert (delivery.event_type, delivery.subject_id) == ("trigger.created", later)


def test_a_sender_claims_nothing_of_busy_subscriptions_and_nothing_at_all_without_room(
    hooks: WebhookStore,
) -> None:
    one, two = subscribe(hooks, "one"), subscribe(hooks, "two")
    hooks.move(triggers, one_each, T0)
    new_trigger(hooks)
    assert hooks.move(triggers, one_each, T0)[1] == 2
    assert hooks.claim(T0, 0, MINUTE) == []
    (claimed,) = hooks.claim(T0, 10, MINUTE, busy=[one.id])
    assert claimed.webhook_id == two.id and claimed.attempt == 1
    (other,) = hooks.claim(T0, 10, MINUTE)
    assert other.webhook_id == one.id


def test_the_result_of_a_sender_whose_claim_was_taken_over_does_not_count(hooks: WebhookStore) -> None:
    """Its lease ran out and another sender sent the message again: only the second attempt's
    result is written (at least once, never a stale overwrite)."""
    hook = subscribe(hooks, "ci")
    hooks.move(triggers, one_each, T0)
    new_trigger(hooks)
    hooks.move(triggers, one_each, T0)
    (first,) = hooks.claim(T0, 10, MINUTE)
    (second,) = hooks.claim(T0 + 2 * MINUTE, 10, MINUTE)  # the first lease lapsed
    assert (first.delivery_id, first.attempt, second.attempt) == (second.delivery_id, 1, 2)
    stale = Outcome(
        first.delivery_id, 1, hook.id, T0 + MINUTE, 30_000.0, ok=False, error="timed out", retry_at=T0
    )
    assert hooks.record([stale], T0 + 2 * MINUTE, max_failures=1, failing_for=timedelta(hours=1)) == []
    found = hooks.delivery(hook.id, first.delivery_id)
    assert found is not None
    delivery, attempts = found
    assert (delivery.state, delivery.attempts, attempts) == ("sending", 2, [])
    current = hooks.get(hook.id)
    assert current is not None and (current.status, current.consecutive_failures) == ("active", 0)
    ok = Outcome(second.delivery_id, 2, hook.id, T0 + 3 * MINUTE, 12.5, ok=True, status=200)
    hooks.record([ok], T0 + 3 * MINUTE, max_failures=1, failing_for=timedelta(hours=1))
    found = hooks.delivery(hook.id, first.delivery_id)
    assert found is not None
    assert found[0].state == "delivered" and [(a.number, a.status) for a in found[1]] == [(2, 200)]


def test_a_failure_of_a_subscription_disabled_meanwhile_does_not_disable_it_again(
    hooks: WebhookStore,
) -> None:
    hook = subscribe(hooks, "ci")
    hooks.move(triggers, one_each, T0)
    new_trigger(hooks)
    hooks.move(triggers, one_each, T0)
    (claimed,) = hooks.claim(T0, 10, MINUTE)
    hooks.change_status(hook.id, "disabled", "paused by alice", T0 + MINUTE)
    gone = Outcome(claimed.delivery_id, 1, hook.id, T0 + MINUTE, 5.0, ok=False, status=410, gone=True)
    assert hooks.record([gone], T0 + MINUTE, max_failures=1, failing_for=timedelta(hours=1)) == []
    current = hooks.get(hook.id)
    assert current is not None
    assert (current.status, current.status_reason, current.consecutive_failures) == (
        "disabled",
        "paused by alice",  # (not "the receiver answered 410 Gone")
        1,
    )


def test_deliveries_read_newest_first_in_pages_and_by_state(hooks: WebhookStore) -> None:
    hook, other = subscribe(hooks, "ci"), subscribe(hooks, "other")
    hooks.move(triggers, one_each, T0)
    for _ in range(3):
        new_trigger(hooks)
    hooks.move(triggers, one_each, T0)
    ids = [d.id for d in hooks.deliveries(hook.id, None, 10)]
    assert len(ids) == 3 and ids == sorted(ids, reverse=True)
    assert [d.id for d in hooks.deliveries(hook.id, ids[0], 10)] == ids[1:]
    assert [d.id for d in hooks.deliveries(hook.id, None, 1)] == ids[:1]
    (oldest,) = hooks.claim(T0, 10, MINUTE, busy=[other.id])  # (one at a time, in order)
    ok = Outcome(oldest.delivery_id, oldest.attempt, hook.id, T0, 3.0, ok=True, status=204)
    hooks.record([ok], T0, max_failures=5, failing_for=timedelta(hours=1))
    assert [d.id for d in hooks.deliveries(hook.id, None, 10, state="delivered")] == ids[-1:]
    assert [d.id for d in hooks.deliveries(hook.id, None, 10, state="pending")] == ids[:-1]
    assert hooks.delivery(other.id, ids[0]) is None  # another subscription's delivery is not its
    assert hooks.delivery(hook.id, 10**9) is None


def test_subscriptions_and_triggers_that_are_gone_are_not_found(hooks: WebhookStore) -> None:
    assert hooks.change_status("wh_nope", "disabled", "", T0) is None
    hook = subscribe(hooks, "ci")
    deleted = hooks.change_status(hook.id, "deleted", "no longer needed", T0)
    assert deleted is not None and deleted.status == "deleted"
    assert hooks.get(hook.id) is None and hooks.all() == []
    assert hooks.change_status(hook.id, "active", "", T0) is None  # nothing to bring back
    trigger = new_trigger(hooks)
    kept = new_trigger(hooks, "api")
    assert hooks.delete_trigger(trigger, T0) is True
    assert hooks.delete_trigger(trigger, T0) is False  # once
    assert hooks.delete_trigger("tr_nope", T0) is False
    assert hooks.trigger(trigger) is None
    assert [t.id for t in hooks.triggers()] == [kept]
