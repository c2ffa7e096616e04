"""Bounded waits must let a background loop be stopped: a ``cancel()`` that arrives together
with the thing waited for is not swallowed (it was, with ``asyncio.wait_for`` on Python 3.11,
and the Slack notifier then never stopped, hanging shutdown)."""

from __future__ import annotations

import asyncio

import pytest

from core.runtime.waiting import wait_event, within


async def _loop(event: asyncio.Event) -> None:
    while True:
        await wait_event(event, 10)
        event.clear()


async def test_a_loop_stops_when_cancelled_as_its_event_is_set() -> None:
    event = asyncio.Event()
    task = asyncio.create_task(_loop(event))
    await asyncio.sleep(0)  # the loop is waiting now
    event.set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)


async def test_wait_event_says_whether_the_event_came() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 0.01) is True


async def test_within_returns_the_result_or_gives_up() -> None:
    assert await within(asyncio.sleep(0, result=7), 1) == (True, 7)
    assert await within(asyncio.sleep(5), 0.01) == (False, None)
