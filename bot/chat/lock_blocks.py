"""Block Kit for environment locks: the refusal with its "ask for it" button, the holder's
reminder (Extend 1h / Release), the handover question (Hand over / Keep it) and the rollback
lock's Acknowledge button. Each button's value names the environment and the lock it was
made for (``since``), so a press on an old message does not act on a newer lock."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from bot.chat import block_kit
from core.locks import Lock, describe, expiry_in

# action ids: the Slack app listens for these
EXTEND, RELEASE, ASK = "lock_extend", "lock_release", "lock_handover_ask"
HAND_OVER, KEEP, ACKNOWLEDGE = "lock_hand_over", "lock_keep", "lock_acknowledge"
ACTIONS = (EXTEND, RELEASE, ASK, HAND_OVER, KEEP, ACKNOWLEDGE)
#: how much the reminder's Extend button adds
EXTEND_S = 3600.0


def slack_user(name: str) -> bool:
    """Whether a principal is a Slack user (who can be written to directly)."""
    return name[:1] in ("U", "W") and name.isalnum()


def told(lock: Lock, now: datetime) -> str:
    """``describe`` with the holder as a Slack mention."""
    return describe(lock, now, block_kit.who)


def value(lock: Lock, **extra: str) -> str:
    return json.dumps({"env": lock.environment, "since": lock.since.isoformat(), **extra})


def read_value(text: str) -> dict[str, str] | None:
    """A lock button's value, or None if it is not one."""
    try:
        data: Any = json.loads(text)
        found = {str(k): str(v) for k, v in data.items()}
    except (ValueError, AttributeError, TypeError):
        return None
    return found if found.get("env") else None


def refused(lock: Lock, now: datetime) -> tuple[str, list[block_kit.Block]]:
    """Someone tried to lock a locked environment: who holds it, and a button to ask for it."""
    summary = f":lock: {told(lock, now)}"
    if lock.kind == "rollback":
        return summary, [block_kit.text(summary), _acknowledge(lock)]
    ask = block_kit.button(f"Ask {_plain(lock.holder)} to hand it over", ASK, value(lock))
    return summary, [block_kit.text(summary), block_kit.actions(f"lock:{lock.environment}", ask)]


def reminder(lock: Lock, now: datetime) -> tuple[str, list[block_kit.Block]]:
    summary = (
        f":hourglass_flowing_sand: {block_kit.who(lock.holder)}, your lock on *{lock.environment}* expires "
        f"{expiry_in(lock, now)}: {lock.reason}"
    )
    buttons = block_kit.actions(
        f"lock:{lock.environment}",
        block_kit.button("Extend 1h", EXTEND, value(lock), "primary"),
        block_kit.button("Release", RELEASE, value(lock)),
    )
    return summary, [block_kit.text(summary), buttons]


def handover_prompt(lock: Lock, now: datetime) -> tuple[str, list[block_kit.Block]]:
    asker = lock.handover_requested_by or "?"
    summary = (
        f":raising_hand: {block_kit.who(lock.holder)}, {block_kit.who(asker)} asks for your lock on "
        f"*{lock.environment}* ({lock.reason})."
    )
    buttons = block_kit.actions(
        f"lock:{lock.environment}",
        block_kit.button("Hand over", HAND_OVER, value(lock, to=asker), "primary"),
        block_kit.button("Keep it", KEEP, value(lock)),
    )
    return summary, [block_kit.text(summary), block_kit.context(told(lock, now)), buttons]


def rollback_locked(lock: Lock, now: datetime) -> tuple[str, list[block_kit.Block]]:
    """For the rollback's message: the environment stays locked until someone acknowledges."""
    summary = f":rewind: {told(lock, now)}"
    return summary, [block_kit.text(summary), _acknowledge(lock)]


def _acknowledge(lock: Lock) -> block_kit.Block:
    sure = block_kit.confirm(
        "Acknowledge the rollback?",
        f"{lock.environment} takes deployments again, including the next run in its queue.",
        "Acknowledge",
        "primary",
    )
    return block_kit.actions(
        f"lock:{lock.environment}", block_kit.button("Acknowledge", ACKNOWLEDGE, value(lock), "primary", sure)
    )


def expired(lock: Lock) -> str:
    return f":unlock: {lock.environment}'s lock by {block_kit.who(lock.holder)} expired ({lock.reason})."


def taken_over(environment: str, holder: str, reason: str, by: str) -> str:
    """An expired lock someone locked the environment over before the keeper swept it."""
    return (
        f":unlock: {environment}'s lock by {block_kit.who(holder)} expired ({reason}); "
        f"{block_kit.who(by)} took it over."
    )


def _plain(name: str) -> str:
    """A name for a button label (plain text: no mentions there)."""
    return "the holder" if slack_user(name) else name
