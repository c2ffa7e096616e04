"""Bounded waits that a loop can be stopped out of.

On Python 3.11 ``asyncio.wait_for`` swallows a cancellation that arrives in the same loop
iteration as the awaited result (CPython gh-86296, fixed in 3.12), and a background loop that
swallows its ``cancel()`` never stops: shutdown hangs. ``asyncio.timeout`` tells its own
cancellation from anyone else's, so every bounded wait in Shipyard goes through it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")
#: the longest a loop with nothing to do rests between looks (``idle_wait``)
IDLE_WAIT_S = 5.0


def idle_wait(poll_interval: float) -> float:
    """How long a loop that found nothing to do rests before it looks again, unless woken: ten
    polls, five seconds at most. Its own process wakes it at once (a commit, a job made ready);
    what another process does without a wake-up is found within this."""
    return min(IDLE_WAIT_S, 10 * poll_interval)


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds pass; True if it was set."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def within(awaitable: Awaitable[T], timeout: float | None) -> tuple[bool, T | None]:
    """Await ``awaitable`` for at most ``timeout`` seconds: ``(True, result)`` if it finished,
    ``(False, None)`` if the time ran out (the awaitable is cancelled then)."""
    try:
        async with asyncio.timeout(timeout):
            return True, await awaitable
    except TimeoutError:
        return False, None
