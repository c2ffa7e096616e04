"""Locks in Slack end to end: ``/deploy lock``, ``unlock`` and ``locks`` through the real Bolt
endpoint with signed requests, and the keeper's messages driven by ``tick(now)`` with the times
a test chooses: the reminder with Extend 1h and Release, the expiry told to the channel, and a
handover asked for, declined and granted with buttons; on SQLite and PostgreSQL. The bot's Web API
calls go to the fake."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.chat import lock_blocks
from bot.locks_keeper import KEEPER, LockKeeper
from core.access import Role
from core.locks import Lock
from storage.locks import LockStore
from tests.slack.fake_slack import Call
from tests.slack.harness import ALICE, BOB, CAROL, CHANNEL, ROOT, Bot, StartBot, buttons_of

#: Alice and Bob deploy, Root administers; Carol holds nothing
GRANTS = {ALICE: [Role.DEPLOYER], BOB: [Role.DEPLOYER], ROOT: [Role.ADMIN]}


@pytest.fixture
async def bot(start_bot: StartBot, db_url: str) -> Bot:
    return await start_bot(
        {},
        GRANTS,
        database_url=db_url,
        slack_channel=CHANNEL,
        environments={"staging": None, "production": {"lock_reminder": "10m"}},
    )


def keeper(bot: Bot) -> LockKeeper:
    return bot.app[KEEPER]


def current(bot: Bot, env: str = "production") -> Lock | None:
    return LockStore(bot.store).current(env, datetime.now(UTC))


def posts_to(bot: Bot, channel: str) -> list[Call]:
    return [c for c in bot.fake.calls_to("chat.postMessage") if c.args.get("channel") == channel]


async def press(bot: Bot, user: str, button: dict[str, Any]) -> dict[str, Any]:
    return await bot.answer(user, button["action_id"], button["value"], "1700000000.000100")


# -- the verbs -------------------------------------------------------------------------------------
async def test_lock_unlock_and_locks_in_the_channel(bot: Bot) -> None:
    assert (await bot.say(ALICE, "locks"))["text"].startswith("No environment is locked.")
    locked = await bot.say(ALICE, 'lock production "incident 4711" for 2h')
    assert locked["response_type"] == "in_channel"
    assert locked["text"].startswith(f":lock: production is locked by <@{ALICE}> since ")
    assert "(just now): incident 4711; expires " in locked["text"]
    held = current(bot)
    assert held is not None and held.holder == ALICE and held.expires_at is not None
    assert held.expires_at - held.since == timedelta(hours=2)

    refused = await bot.say(BOB, "lock production hotfix")
    assert refused["response_type"] == "ephemeral"
    assert f"production is locked by <@{ALICE}>" in refused["text"] and "incident 4711" in refused["text"]
    assert lock_blocks.ASK in buttons_of(refused)

    listed = await bot.say(BOB, "locks")
    assert listed["response_type"] == "ephemeral" and "incident 4711" in listed["text"]

    not_yours = await bot.say(BOB, "unlock production")
    assert not_yours["response_type"] == "ephemeral"
    assert f"Only {ALICE} or an admin may unlock it" in not_yours["text"]
    assert f"locked by <@{ALICE}>" in not_yours["text"]
    assert "deployer" in (await bot.say(CAROL, 'lock staging "x"'))["text"]  # no role, no lock
    assert "Did you mean `production`?" in (await bot.say(ALICE, 'lock prodution "x"'))["text"]
    assert "Did you mean `production`?" in (await bot.say(ALICE, "unlock prodution"))["text"]
    assert "staging is not locked" in (await bot.say(ALICE, "unlock staging"))["text"]
    assert "Say which environment and why" in (await bot.say(BOB, "lock staging"))["text"]
    assert "give '2' a unit" in (await bot.say(BOB, 'lock staging "load test" for 2'))["text"]
    assert current(bot, "staging") is None

    unlocked = await bot.say(ALICE, "unlock production")
    assert unlocked == {**unlocked, "response_type": "in_channel"}
    assert unlocked["text"] == f":unlock: <@{ALICE}> unlocked *production*: incident 4711."
    assert current(bot) is None

    await bot.say(BOB, 'lock staging "load test"')
    by_admin = await bot.say(ROOT, "unlock staging")
    assert by_admin["text"] == f":unlock: <@{ROOT}> unlocked *staging* (locked by <@{BOB}>): load test."

    audit = [
        (e.action, e.actor, e.outcome) for e in reversed(bot.store.audit_entries(100)) if e.channel == "slack"
    ]
    assert audit == [
        ("lock_environment", ALICE, "accepted"),
        ("lock_environment", BOB, "rejected"),
        ("unlock_environment", BOB, "rejected"),
        ("unlock_environment", ALICE, "rejected"),  # (staging was not locked; the typo is no entry)
        ("unlock_environment", ALICE, "accepted"),
        ("lock_environment", BOB, "accepted"),
        ("unlock_environment", ROOT, "accepted"),
    ]


# -- the keeper ------------------------------------------------------------------------------------
async def test_the_holder_is_reminded_once_and_extends_then_releases_with_buttons(bot: Bot) -> None:
    await bot.say(ALICE, 'lock production "incident 4711" for 2h')
    held = current(bot)
    assert held is not None and held.expires_at is not None
    expiry = held.expires_at

    early = await keeper(bot).tick(expiry - timedelta(minutes=11))  # production reminds 10m ahead
    assert early.reminded == [] and posts_to(bot, ALICE) == []
    due = await keeper(bot).tick(expiry - timedelta(minutes=9))
    assert [lock.environment for lock in due.reminded] == ["production"]
    assert (await keeper(bot).tick(expiry - timedelta(minutes=8))).reminded == []  # once
    [reminder] = posts_to(bot, ALICE)  # a direct message to the holder
    assert f"<@{ALICE}>, your lock on *production* expires" in reminder.args["text"]
    assert "incident 4711" in reminder.args["text"]
    assert set(buttons_of(reminder)) == {lock_blocks.EXTEND, lock_blocks.RELEASE}

    refused = await press(bot, BOB, buttons_of(reminder)[lock_blocks.EXTEND])
    assert f"Only {ALICE} may extend it" in refused["text"]
    extended = await press(bot, ALICE, buttons_of(reminder)[lock_blocks.EXTEND])
    assert extended["text"].startswith(":lock: production is locked by")
    later = current(bot)
    assert later is not None and later.expires_at == expiry + timedelta(hours=1)

    assert (await keeper(bot).tick(expiry)).expired == []  # the old expiry passes: still locked
    again = await keeper(bot).tick(expiry + timedelta(minutes=51))
    assert [lock.expires_at for lock in again.reminded] == [expiry + timedelta(hours=1)]
    second = posts_to(bot, ALICE)[-1]
    released = await press(bot, ALICE, buttons_of(second)[lock_blocks.RELEASE])
    assert released["response_type"] == "in_channel"
    assert released["text"] == f":unlock: <@{ALICE}> unlocked *production*: incident 4711."
    assert current(bot) is None
    stale = await press(bot, ALICE, buttons_of(reminder)[lock_blocks.RELEASE])  # the first reminder's button
    assert "That button is for an earlier lock; production is not locked any more." == stale["text"]


async def test_an_expired_lock_is_told_to_the_channel_once(bot: Bot) -> None:
    await bot.say(BOB, 'lock staging "load test" for 1h')
    held = current(bot, "staging")
    assert held is not None and held.expires_at is not None
    assert (await keeper(bot).tick(held.expires_at - timedelta(seconds=1))).expired == []
    done = await keeper(bot).tick(held.expires_at)
    assert [lock.holder for lock in done.expired] == [BOB]
    told = [c for c in posts_to(bot, CHANNEL) if "expired" in c.args["text"]]
    assert [c.args["text"] for c in told] == [f":unlock: staging's lock by <@{BOB}> expired (load test)."]
    assert (await keeper(bot).tick(held.expires_at + timedelta(minutes=1))).expired == []
    assert len([c for c in posts_to(bot, CHANNEL) if "expired" in c.args["text"]]) == 1
    assert "No environment is locked" in (await bot.say(BOB, "locks"))["text"]


async def test_an_expired_lock_taken_over_before_it_was_swept_is_told_to_the_channel(bot: Bot) -> None:
    await keeper(bot).stop()  # (its sweep would tell the expiry itself)
    LockStore(bot.store).acquire(
        "production", ALICE, "incident 4711", 3600, datetime.now(UTC) - timedelta(hours=2), channel="slack"
    )
    taken = await bot.say(BOB, 'lock production "release 1.4"')
    assert taken["text"].startswith(f":lock: production is locked by <@{BOB}>")
    told = await bot.fake.wait_for("chat.postMessage", lambda c: "expired" in c.args.get("text", ""))
    assert told.args["channel"] == CHANNEL
    assert told.args["text"] == (
        f":unlock: production's lock by <@{ALICE}> expired (incident 4711); <@{BOB}> took it over."
    )
    entry = next(e for e in bot.store.audit_entries(20) if e.action == "expire_lock")
    assert (entry.actor, entry.detail["holder"]) == ("shipyard", ALICE)


async def test_an_expired_lock_a_rollback_replaced_before_it_was_swept_is_told_to_the_channel(
    bot: Bot,
) -> None:
    """A rollback locks production over Alice's lock that ran out, before the keeper swept it:
    the channel hears her lock expired, as when a person takes an expired lock over."""
    await keeper(bot).stop()  # (its sweep would tell the expiry itself)
    LockStore(bot.store).acquire(
        "production", ALICE, "incident 4711", 3600, datetime.now(UTC) - timedelta(hours=2), channel="slack"
    )
    with bot.store.transaction() as tx:  # (what a rollback that succeeded does: core.runtime.writes)
        tx.lock_after_rollback("production", "rolled back to web 1.4.1", datetime.now(UTC))
    held = current(bot)
    assert held is not None and (held.holder, held.kind) == ("shipyard", "rollback")
    told = await bot.fake.wait_for("chat.postMessage", lambda c: "expired" in c.args.get("text", ""))
    assert told.args["channel"] == CHANNEL
    assert told.args["text"].startswith(
        f":unlock: production's lock by <@{ALICE}> expired (incident 4711); "
    ) and told.args["text"].endswith("took it over.")
    entry = next(e for e in bot.store.audit_entries(20) if e.action == "expire_lock")
    assert (entry.actor, entry.detail["holder"]) == ("shipyard", ALICE)


async def test_a_lock_taken_and_released_over_the_api_is_told_to_the_channel(bot: Bot) -> None:
    """``/deploy lock`` answers in the channel; a lock taken or released over the API (a script
    during an incident) is told there too, once, so the channel knows why deploys stop."""
    assert bot.client is not None
    await bot.say(ALICE, 'lock production "release 1.4"')  # (told by its own answer, not again)
    await bot.say(ALICE, "unlock production")
    auth = bot.api_auth("incident-bot")
    path = "/api/v1/environments/production/lock"
    taken = await bot.client.post(path, json={"reason": "incident 4711", "duration": "2h"}, headers=auth)
    assert taken.status == 201, await taken.text()
    told = await bot.fake.wait_for("chat.postMessage", lambda c: "incident-bot" in c.args.get("text", ""))
    assert told.args["channel"] == CHANNEL
    assert told.args["text"].startswith(":lock: production is locked by incident-bot since ")
    assert told.args["text"].endswith("(from the API).") and "incident 4711" in told.args["text"]
    gone = await bot.client.delete(path, headers=auth)
    assert gone.status == 200, await gone.text()
    unlocked = await bot.fake.wait_for("chat.postMessage", lambda c: "unlocked" in c.args.get("text", ""))
    said = ":unlock: incident-bot unlocked *production*: incident 4711 (from the API)."
    assert unlocked.args["text"] == said
    # (the notifier follows the log in order: Alice's lock and unlock were handled before these)
    posted = [c.args["text"] for c in posts_to(bot, CHANNEL)]
    assert [t for t in posted if "production" in t] == [told.args["text"], unlocked.args["text"]]


async def test_a_lock_handed_over_late_reminds_its_new_holder(bot: Bot) -> None:
    """Bob did not choose the expiry Alice's lock hands him 5 minutes before it: he is reminded
    (with Extend 1h) at once, as Alice was, not left to find the environment unlocked."""
    await bot.say(ALICE, 'lock production "incident 4711" for 2h')
    held = current(bot)
    assert held is not None and held.expires_at is not None
    expiry, locks = held.expires_at, LockStore(bot.store)
    assert [lock.holder for lock in (await keeper(bot).tick(expiry - timedelta(minutes=9))).reminded] == [
        ALICE
    ]
    locks.request_handover("production", BOB, expiry - timedelta(minutes=6), channel="slack")
    locks.hand_over("production", ALICE, BOB, expiry - timedelta(minutes=5), channel="slack")
    due = await keeper(bot).tick(expiry - timedelta(minutes=5))
    assert [lock.holder for lock in due.reminded] == [BOB]
    [reminder] = posts_to(bot, BOB)
    assert f"<@{BOB}>, your lock on *production* expires" in reminder.args["text"]
    assert lock_blocks.EXTEND in buttons_of(reminder)
    assert (await keeper(bot).tick(expiry - timedelta(minutes=4))).reminded == []  # once


async def test_a_lock_taken_or_relocked_for_less_than_the_reminder_is_not_reminded(bot: Bot) -> None:
    at, locks = datetime.now(UTC), LockStore(bot.store)
    locks.acquire("production", ALICE, "quick fix", 300, at)  # production reminds 10m ahead
    assert (await keeper(bot).tick(at + timedelta(minutes=1))).reminded == []
    locks.acquire("staging", BOB, "load test", 7200, at)
    locks.acquire("staging", BOB, "load test, shorter", 300, at + timedelta(hours=1))  # (relocked)
    assert (await keeper(bot).tick(at + timedelta(hours=1, minutes=1))).reminded == []
    assert posts_to(bot, ALICE) == posts_to(bot, BOB) == []


async def test_a_holder_outside_slack_is_reminded_in_the_channel(bot: Bot) -> None:
    at = datetime.now(UTC)
    LockStore(bot.store).acquire("staging", "ci-bot", "load test", 3600, at, channel="rest")
    done = await keeper(bot).tick(at + timedelta(minutes=50))  # staging: the default 15m ahead
    assert [lock.holder for lock in done.reminded] == ["ci-bot"]
    [reminder] = [c for c in posts_to(bot, CHANNEL) if "your lock" in c.args["text"]]
    assert reminder.args["text"].startswith(":hourglass_flowing_sand: ci-bot, your lock on *staging* expires")


async def test_a_handover_is_asked_for_declined_and_granted_with_buttons(bot: Bot) -> None:
    await bot.say(ALICE, 'lock production "incident 4711"')
    refused = await bot.say(BOB, 'lock production "release 1.4"')
    ask = buttons_of(refused)[lock_blocks.ASK]
    assert "Asking for a lock needs the deployer role" in (await press(bot, CAROL, ask))["text"]
    asked = await press(bot, BOB, ask)
    assert asked["text"].startswith(f"Asked <@{ALICE}> to hand over the lock on *production*")

    first = await keeper(bot).tick()
    assert [lock.handover_requested_by for lock in first.asked] == [BOB]
    assert (await keeper(bot).tick()).asked == []  # asked once
    [prompt] = posts_to(bot, ALICE)
    assert f"<@{BOB}> asks for your lock on *production*" in prompt.args["text"]
    assert set(buttons_of(prompt)) == {lock_blocks.HAND_OVER, lock_blocks.KEEP}

    assert f"Only {ALICE} may answer" in (await press(bot, BOB, buttons_of(prompt)[lock_blocks.KEEP]))["text"]
    kept = await press(bot, ALICE, buttons_of(prompt)[lock_blocks.KEEP])
    assert kept["text"] == f"You keep the lock on *production*; <@{BOB}> was told."
    [answer] = posts_to(bot, BOB)
    assert f"<@{ALICE}> keeps the lock for now" in answer.args["text"]

    await press(bot, BOB, ask)  # asks again: asked again
    await keeper(bot).tick()
    second = posts_to(bot, ALICE)[-1]
    assert second is not prompt and lock_blocks.HAND_OVER in buttons_of(second)
    handed = await press(bot, ALICE, buttons_of(second)[lock_blocks.HAND_OVER])
    assert handed["text"] == f"You handed the lock on *production* to <@{BOB}>."
    held = current(bot)
    assert held is not None and (held.holder, held.reason) == (BOB, "incident 4711")
    assert f"<@{ALICE}> handed you the lock" in posts_to(bot, BOB)[-1].args["text"]
    stale = await press(bot, ALICE, buttons_of(second)[lock_blocks.KEEP])
    assert stale["text"].startswith("That button is for an earlier lock; production changed")
    assert f"locked by <@{BOB}>" in stale["text"]


async def test_a_rollback_lock_is_acknowledged_by_a_deployer(bot: Bot) -> None:
    locks = LockStore(bot.store)
    rollback = locks.acquire(
        "production", ROOT, "rolled back web 1.4.2 to 1.4.1", None, datetime.now(UTC), "rollback"
    )
    summary, blocks = lock_blocks.rollback_locked(rollback, datetime.now(UTC))
    assert "until someone acknowledges the rollback" in summary
    acknowledge = buttons_of({"blocks": blocks})[lock_blocks.ACKNOWLEDGE]
    assert acknowledge["confirm"]["confirm"]["text"] == "Acknowledge"

    refused = await bot.say(BOB, 'lock production "mine"')
    assert "until someone acknowledges the rollback" in refused["text"]
    assert set(buttons_of(refused)) == {lock_blocks.ACKNOWLEDGE}  # not "ask for it": acknowledge it
    nobody = await press(bot, CAROL, acknowledge)
    assert nobody["response_type"] == "ephemeral" and current(bot) is not None
    assert "a deployer or an admin may acknowledge a rollback" in nobody["text"]
    done = await press(bot, BOB, acknowledge)
    assert done["response_type"] == "in_channel"
    assert done["text"].startswith(f":white_check_mark: <@{BOB}> acknowledged the rollback of *production*")
    assert current(bot) is None
    entry = next(e for e in bot.store.audit_entries(20) if e.action == "acknowledge_rollback")
    assert (entry.actor, entry.channel, entry.detail["holder"]) == (BOB, "slack", ROOT)
