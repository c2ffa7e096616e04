"""The environment board: per environment what runs there (artifact, revision, since when, by
whom), its health, lock, queue and freezes, its recent deployments and DORA's four keys over 30
days, read the way the REST API and the App Home read them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from bot.api.gateway import ApiGateway
from bot.api.schemas import DeploymentOut
from core.analysis import EnvironmentHealth, Health
from core.dora import (
    DEFAULT_WINDOW,
    DeploymentFacts,
    FourKeys,
    four_keys,
    is_change,
    is_successful,
    parse_window,
)
from core.freeze import Freeze, active_freeze, local_text, next_freeze
from core.locks import describe as lock_words
from storage.locks import LockStore

#: deployments drawn per environment
HISTORY = 20
#: freezes said when they start within this
FREEZE_HORIZON = timedelta(days=14)


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    current: DeploymentOut | None
    history: list[DeploymentOut]
    health: EnvironmentHealth | None
    lock: str
    queue: str
    freeze: str
    keys: FourKeys
    #: successful changes a week over the window, oldest week first (the small chart: what the
    #: deployment frequency counts)
    weekly: list[int]
    #: the environment after it on the promotion path
    next: str | None
    locked: bool


async def rows(g: ApiGateway, at: datetime) -> list[Row]:
    settings = g.shipyard.settings
    locks = {lock.environment: lock for lock in await g.read(LockStore(g.shipyard.store).all, at)}
    known = set(await g.read(g.reads.environment_names)) | set(locks)
    names = [n for n in settings.environments.path] + sorted(known - set(settings.environments.path))
    every = await g.read(g.analyses.healths, quick=True)
    window = parse_window(DEFAULT_WINDOW)
    found = []
    for name in names:
        policy = settings.environments.policy(name)
        health = None
        if policy.health is not None:
            health = every.get(name) or EnvironmentHealth(name, Health.UNKNOWN, at, "no measurement yet")
        current = await g.read(g.reads.current_deployment, name)
        history = await g.read(g.reads.deployments, name, None, HISTORY)
        queue = await g.read(g.shipyard.service.queue, name)
        facts = await g.read(g.reads.dora_facts, name, at - window, at)
        keys = four_keys(name, facts, at - window, at)
        lock = locks.get(name)
        found.append(
            Row(
                name=name,
                current=DeploymentOut.of(current) if current else None,
                history=[DeploymentOut.of(d) for d in reversed(history)],
                health=health,
                lock=lock_words(lock, at) if lock is not None else "not locked",
                queue=_queue_words(queue.running, len(queue.waiting)),
                freeze=_freeze_words(policy.freezes, at),
                keys=keys,
                weekly=_weekly(facts, at, window),
                next=after(settings.environments.path, name),
                locked=lock is not None,
            )
        )
    return found


def after(path: list[str], name: str) -> str | None:
    """The environment after ``name`` on the promotion ``path`` (None: last, or not on it)."""
    return path[path.index(name) + 1] if name in path[:-1] else None


def _queue_words(running: tuple[str, str] | None, waiting: int) -> str:
    now = f"{running[1]} deploying" if running else "nothing deploying"
    return f"{now}; {waiting} waiting" if waiting else now


def _freeze_words(freezes: Sequence[Freeze], at: datetime) -> str:
    current = active_freeze(freezes, at)
    if current is not None:
        return current.describe()
    upcoming = next_freeze(freezes, at, FREEZE_HORIZON)
    if upcoming is None:
        return "no freeze within 14 days"
    return f"next freeze from {local_text(upcoming.starts, upcoming.timezone)}: {upcoming.describe()}"


def _weekly(facts: Sequence[DeploymentFacts], at: datetime, window: timedelta) -> list[int]:
    """The successful changes of each week back from ``at``, over the whole window (every
    deployment in it, not only the last ``HISTORY``), so the bars add up to the frequency."""
    weeks = max(1, math.ceil(window / timedelta(weeks=1)))
    counts = [0] * weeks
    for d in facts:
        age = at - d.finished_at
        if is_change(d) and is_successful(d) and timedelta(0) <= age < timedelta(weeks=weeks):
            counts[weeks - 1 - int(age / timedelta(weeks=1))] += 1
    return counts
