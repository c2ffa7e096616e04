"""Artifacts, schedules, webhooks, incoming triggers and break-glass reviews change through the
unit of work runs use, on real SQLite and PostgreSQL: each change appends its event to the log
runs' events go to, and a transaction that fails leaves neither the change nor the event."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from core.artifacts import make_spec
from core.events import NO_RUN, Event
from core.review import open_review
from core.schedule import Schedule
from storage import mappers
from storage.artifacts import ArtifactStore
from storage.reviews import ReviewStore
from storage.schedules import ScheduleStore, file_schedule_id
from storage.store import SqlStore
from storage.webhooks import DELIVERY, Outcome, WebhookStore

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
LATER = T0 + timedelta(minutes=5)
SPEC = make_spec("web", "1.4.2", f"sha256:{1:064x}", "oci://registry.example.com/web:1.4.2", {})


@pytest.fixture
def store(db_url: str, stores: list[SqlStore]) -> SqlStore:
    opened = SqlStore(db_url)
    stores.append(opened)
    return opened


# -- the changes: each sets up what it needs, makes one change, and tells whether it is there --
def _artifact_registered(store: SqlStore) -> tuple[Callable[[], object], Callable[[], bool]]:
    artifacts = ArtifactStore(store)
    return (
        lambda: artifacts.register(SPEC, by="ci", now=LATER)[0].id,
        lambda: artifacts.get("web@1.4.2") is not None,
    )


def _artifact_marked_bad(store: SqlStore) -> tuple[Callable[[], object], Callable[[], bool]]:
    artifacts = ArtifactStore(store)
    made, _ = artifacts.register(SPEC, by="ci", now=T0)

    def mark() -> str:
        return artifacts.mark_bad(made.id, "leaks memory", by="bob", now=LATER, channel="rest").id

    return mark, lambda: bool(getattr(artifacts.get(made.id), "bad", False))


def _schedule(**changes: Any) -> Schedule:
    values: dict[str, Any] = {
        "id": "s1",
        "pipeline": "web",
        "cron": "0 3 * * *",
        "timezone": "UTC",
        "parameters": {},
        "owner": "alice",
        "source": "api",
        "grace_s": 3600.0,
        "next_fire_at": T0 + timedelta(days=1),
        "created_at": LATER,
    }
    return Schedule(**(values | changes))


def _schedule_created(store: SqlStore) -> tuple[Callable[[], object], Callable[[], bool]]:
    schedules = ScheduleStore(store)
    return lambda: schedules.add(_schedule()).id, lambda: schedules.get("s1") is not None


def _schedule_deleted(store: SqlStore) -> tuple[Callable[[], object], Callable[[], bool]]:
    schedules = ScheduleStore(store)
    schedules.add(_schedule(created_at=T0))

    def remove() -> str:
        assert schedules.remove("s1", LATER)
        return "s1"

    return remove, lambda: schedules.get("s1") is None


FILE_ID = file_schedule_id("web", "0 3 * * *", "UTC", {})


def _file_schedule_created(store: SqlStore) -> tuple[Callable[[], object], Callable[[], bool]]:
    schedules = ScheduleStore(store)

    def load() -> str:
        schedules.sync_file("web", [_schedule(id=FILE_ID, source="file")], LATER)
        return FILE_ID

    return load, lambda: schedules.get(FILE_ID) is not None


def _file_schedule_deleted(store: SqlStore) -> tuple[Callable[[], object], Callable[[], bool]]:
    schedules = ScheduleStore(store)
    schedules.sync_file("web", [_schedule(id=FILE_ID, source="file")], T0)

    def load() -> str:
        schedules.sync_file("web", [], LATER)
        return FILE_ID

    return load, lambda: schedules.get(FILE_ID) is None


def _subscribe(webhooks: WebhookStore, at: datetime) -> str:
    return webhooks.create(
        url="https://hooks.example.com/x",
        events=["run.finished"],
        pipeline=None,
        environment=None,
        description="",
        secret="whsec_" + "a" * 32,
        owner="alice",
        now=at,
    ).id


def _webhook_subscribed(store: SqlStore) -> tuple[Callable[[], object], Callable[[], bool]]:
    webhooks = WebhookStore(store)
    return lambda: _subscribe(webhooks, LATER), lambda: bool(webhooks.all())


def _status_change(
    to: str, *before: str
) -> Callable[[SqlStore], tuple[Callable[[], object], Callable[[], bool]]]:
    def setup(store: SqlStore) -> tuple[Callable[[], object], Callable[[], bool]]:
        webhooks = WebhookStore(store)
        webhook_id = _subscribe(webhooks, T0)
        for status in before:
            webhooks.change_status(webhook_id, status, "", T0)

        def change() -> str:
            changed = webhooks.change_status(webhook_id, to, "asked", LATER)
            assert changed is not None and changed.status == to
            return webhook_id

        def applied() -> bool:
            found = webhooks.get(webhook_id)
            return found.status == to if found is not None else to == "deleted"

        return change, applied

    return setup


def _delivery(store: SqlStore, webhook_id: str, state: str) -> int:
    row = {
        "webhook_id": webhook_id,
        "key": "k1",
        "msg_id": "msg_1.run.finished",
        "event_type": "run.finished",
        "event_seq": 1,
        "position": 8,
        "run_id": "r1",
        "subject_id": "r1",
        "body": "{}",
        "state": state,
        "attempts": 0,
        "next_attempt_at": T0,
        "last_error": "",
        "created_at": T0,
        "finished_at": T0 if state == "failed" else None,
    }
    with store.transaction() as tx:
        return int(tx.conn.execute(sa.insert(DELIVERY).values(row).returning(DELIVERY.c.id)).scalar_one())


def _disabled_after_failures(store: SqlStore) -> tuple[Callable[[], object], Callable[[], bool]]:
    webhooks = WebhookStore(store)
    webhook_id = _subscribe(webhooks, T0)
    _delivery(store, webhook_id, "pending")
    (claimed,) = webhooks.claim(T0, 10, timedelta(minutes=1))

    def record() -> str:
        gone = Outcome(
            claimed.delivery_id, claimed.attempt, webhook_id, LATER, 5.0, ok=False, status=410, gone=True
        )
        (disabled,) = webhooks.record([gone], LATER, max_failures=10, failing_for=timedelta(days=1))
        return disabled.webhook_id

    return record, lambda: getattr(webhooks.get(webhook_id), "status", None) == "disabled"


def _redelivery_queued(store: SqlStore) -> tuple[Callable[[], object], Callable[[], bool]]:
    webhooks = WebhookStore(store)
    webhook_id = _subscribe(webhooks, T0)
    first = _delivery(store, webhook_id, "failed")

    def redeliver() -> str:
        again = webhooks.redeliver(webhook_id, first, LATER)
        assert not isinstance(again, str), again
        return webhook_id

    return redeliver, lambda: len(webhooks.deliveries(webhook_id, None, 10)) == 2


def _trigger_created(store: SqlStore) -> tuple[Callable[[], object], Callable[[], bool]]:
    webhooks = WebhookStore(store)

    def create() -> str:
        made = webhooks.create_trigger(
            pipeline="web", kind="generic", description="", secret="s" * 32, owner="alice", now=LATER
        )
        return made.id

    return create, lambda: bool(webhooks.triggers())


def _trigger_deleted(store: SqlStore) -> tuple[Callable[[], object], Callable[[], bool]]:
    webhooks = WebhookStore(store)
    made = webhooks.create_trigger(
        pipeline="web", kind="generic", description="", secret="s" * 32, owner="alice", now=T0
    )

    def delete() -> str:
        assert webhooks.delete_trigger(made.id, LATER)
        return made.id

    return delete, lambda: webhooks.trigger(made.id) is None


def _review_opened(store: SqlStore) -> tuple[Callable[[], object], Callable[[], bool]]:
    def open_it() -> str:
        with store.transaction() as tx:  # as the service does, in the transaction creating the run
            tx.open_review(open_review("r1", "root", "outage", LATER, 3600))
        return "r1"

    return open_it, lambda: ReviewStore(store).get("r1") is not None


def _review_acknowledged(store: SqlStore) -> tuple[Callable[[], object], Callable[[], bool]]:
    with store.transaction() as tx:
        tx.open_review(open_review("r1", "root", "outage", T0, 3600))
    reviews = ReviewStore(store)

    def acknowledge() -> str:
        reviews.acknowledge("r1", "bob", ("alice",), LATER, channel="rest", ref="web#1")
        return "r1"

    return acknowledge, lambda: getattr(reviews.get("r1"), "acknowledged_by", None) == "bob"


@dataclass(frozen=True)
class Case:
    event: str
    setup: Callable[[SqlStore], tuple[Callable[[], object], Callable[[], bool]]]


CASES = [
    Case("artifact.registered", _artifact_registered),
    Case("artifact.marked_bad", _artifact_marked_bad),
    Case("schedule.created", _schedule_created),
    Case("schedule.deleted", _schedule_deleted),
    Case("schedule.created", _file_schedule_created),
    Case("schedule.deleted", _file_schedule_deleted),
    Case("webhook.subscribed", _webhook_subscribed),
    Case("webhook.disabled", _status_change("disabled")),
    Case("webhook.enabled", _status_change("active", "disabled")),
    Case("webhook.unsubscribed", _status_change("deleted")),
    Case("webhook.disabled", _disabled_after_failures),
    Case("webhook.redelivery_queued", _redelivery_queued),
    Case("trigger.created", _trigger_created),
    Case("trigger.deleted", _trigger_deleted),
    Case("review.opened", _review_opened),
    Case("review.acknowledged", _review_acknowledged),
]
IDS = [f"{c.event}-{c.setup.__name__.strip('_')}" for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_each_change_appends_its_event_to_the_log_runs_use(store: SqlStore, case: Case) -> None:
    change, applied = case.setup(store)
    before = store.last_event_seq()

    subject_id = change()

    assert applied()
    (event,) = store.events_after(before)
    subject = case.event.split(".")[0]
    assert (event.name, event.subject, event.subject_id, event.at) == (case.event, subject, subject_id, LATER)
    assert event.seq > before
    # whatever follows a run (its thread, its event stream, `shipyard run`) does not see it
    assert event.run_id == NO_RUN and store.events_after(before, run_id="r1") == []


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_failed_transaction_leaves_neither_the_change_nor_its_event(
    store: SqlStore, case: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    change, applied = case.setup(store)
    before = store.last_event_seq()
    written = mappers.event_values
    failed: list[str] = []

    def failing(event: Event) -> dict[str, Any]:
        if event.name == case.event:
            failed.append(event.name)
            raise RuntimeError("the database went away while the event was written")
        return written(event)

    monkeypatch.setattr(mappers, "event_values", failing, raising=True)

    with pytest.raises(RuntimeError, match="went away"):
        change()

    assert failed == [case.event]  # the fault happened: the event was being written with the change
    assert not applied()
    assert store.events_after(before) == []
