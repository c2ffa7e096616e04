"""Runner attendance (``core.runtime.attendance``) on the real registry, SQLite and PostgreSQL:
a runner is written down when it first calls, when it describes itself differently and then at
most every few seconds (never more rarely than half its lease, so "online" stays true), and a
drain reaches it at once when set here and within that interval when set on another replica.

What the database holds is read back: a call that was not written leaves ``last_seen`` as it
was."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from core.labels import RunnerSeen
from core.runtime.attendance import Attendance
from core.runtime.orchestrator import Orchestrator
from core.runtime.service import Service
from storage.runners import RunnerRegistry
from storage.store import SqlStore
from tests.helpers import Clock


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Attending:
    """The attendance under test, the registry it writes to, and its two clocks (wall, monotonic)."""

    def __init__(
        self, attendance: Attendance, registry: RunnerRegistry, clock: Clock, tick: Monotonic
    ) -> None:
        self.attendance, self.registry, self.clock, self.tick = attendance, registry, clock, tick

    def later(self, seconds: float) -> datetime:
        """Both clocks move on by ``seconds``; returns the wall time now."""
        self.clock.advance(seconds)
        self.tick.now += seconds
        return self.clock.now

    def seen(self, name: str = "eu-1") -> RunnerSeen:
        return self.registry.get(name)

    async def claim(
        self, name: str = "eu-1", labels: tuple[str, ...] = ("linux",), lease_s: float = 30
    ) -> bool:
        return await self.attendance.claiming(name, labels=labels, version="1.4", capacity=2, lease_s=lease_s)


@pytest.fixture
async def attending(
    db_url: str, make_service: Callable[..., Service], tmp_path: Path
) -> AsyncIterator[Attending]:
    clock, tick = Clock(), Monotonic()
    svc = make_service(db_url, clock=clock)
    assert isinstance(svc.store, SqlStore)
    orchestrator = Orchestrator(svc, workdir=tmp_path)
    registry = RunnerRegistry(svc.store)
    yield Attending(
        Attendance(registry, orchestrator, clock, every_s=5.0, monotonic=tick), registry, clock, tick
    )
    await orchestrator.stop()


async def test_a_runner_is_written_down_when_it_first_calls_then_at_most_every_interval(
    attending: Attending,
) -> None:
    first = attending.clock.now
    assert await attending.claim() is False
    seen = attending.seen()
    assert (seen.labels, seen.version, seen.capacity, seen.lease_s) == (("linux",), "1.4", 2, 30)
    assert seen.first_seen == seen.last_seen == first
    attending.later(4.9)
    assert await attending.claim() is False
    assert attending.seen().last_seen == first  # (a poll within the interval writes nothing)
    now = attending.later(0.1)
    await attending.claim()
    assert attending.seen().last_seen == now


async def test_a_runner_that_describes_itself_differently_is_written_down_at_once(
    attending: Attending,
) -> None:
    await attending.claim()
    now = attending.later(1)
    await attending.claim(labels=("linux", "gpu", "linux"))
    seen = attending.seen()
    assert seen.labels == ("gpu", "linux") and seen.last_seen == now
    attending.later(1)
    await attending.claim(labels=("gpu", "linux"))  # the same labels in another order: the same runner
    assert attending.seen().last_seen == now


async def test_a_short_lease_is_written_down_every_half_lease_so_the_runner_stays_online(
    attending: Attending,
) -> None:
    await attending.claim(lease_s=4)
    now = attending.later(2)  # half the lease, before the 5 s interval
    await attending.claim(lease_s=4)
    seen = attending.seen()
    assert seen.last_seen == now and seen.online(now + timedelta(seconds=7.9))


async def test_a_drain_set_on_another_replica_is_learned_within_the_interval(attending: Attending) -> None:
    await attending.claim()
    attending.registry.drain("eu-1", "ops", attending.clock.now, "test")  # (as another replica would)
    attending.later(1)
    assert await attending.claim() is False  # not yet asked
    assert await attending.attendance.renewing("eu-1", 30) is False
    attending.later(4)
    assert await attending.claim() is True


async def test_a_drain_set_here_is_heard_at_the_next_call(attending: Attending) -> None:
    await attending.claim()
    attending.registry.drain("eu-1", "ops", attending.clock.now, "test")
    attending.attendance.forget("eu-1")  # (what the drain endpoint does)
    assert await attending.attendance.renewing("eu-1", 30) is True
    attending.registry.resume("eu-1", "ops", attending.clock.now, "test")
    attending.attendance.forget("eu-1")
    assert await attending.claim() is False


async def test_renewals_keep_a_busy_runner_online_without_a_write_per_renewal(attending: Attending) -> None:
    await attending.claim()
    first = attending.clock.now
    attending.later(3)
    assert await attending.attendance.renewing("eu-1", 30) is False
    assert attending.seen().last_seen == first
    now = attending.later(2)
    assert await attending.attendance.renewing("eu-1", 30) is False
    assert attending.seen().last_seen == now
    attending.later(1)  # renewed 1 s ago, described 6 s ago: a claim now writes nothing new
    await attending.claim()
    assert attending.seen().last_seen == now


async def test_after_a_restart_a_renewal_is_written_down_and_the_next_claim_describes_the_runner(
    attending: Attending,
) -> None:
    """A new process knows nothing of a runner that only renews: it touches its row at once, and
    the runner's next claim writes its description even within the interval."""
    await attending.claim()
    attending.attendance.forget("eu-1")  # (as a restart forgets everything)
    now = attending.later(10)
    assert await attending.attendance.renewing("eu-1", 30) is False
    assert attending.seen().last_seen == now
    later = attending.later(1)
    await attending.claim(labels=("linux",))
    assert attending.seen().last_seen == later


async def test_a_renewal_from_a_runner_never_seen_writes_nothing(attending: Attending) -> None:
    assert await attending.attendance.renewing("ghost", 30) is False
    assert attending.registry.all() == []
