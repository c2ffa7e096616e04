"""Analyses on a real database (SQLite and PostgreSQL), measured by the loop with real command
checks (subprocesses, exiting with what the test wrote in the file ``smoke``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from core.analysis import AnalysisKind, AnalysisStatus, Health, Taken, health_analysis_id, spread
from core.checks import CheckDef, CheckResult, HealthWatch, Measurement, VerifyPolicy
from core.environments import Environments
from core.errors import DatabaseUnreachable
from core.runtime.analyses import AnalysisLoop
from core.runtime.clock import utcnow
from core.runtime.measure import measure
from storage.analyses import MEASUREMENT, AnalysisStore
from storage.store import SqlStore
from tests.checks.services import WebService

T0 = datetime(2026, 12, 6, 12, 0, 0, tzinfo=UTC)


class Probe:
    """The real ``measure``, counting the checks it measured."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def __call__(self, name: str, check: CheckDef, **kw: Any) -> Measurement:
        self.calls.append(name)
        return await measure(name, check, **kw)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def environments(verify: dict[str, Any] | None = None, health: bool = True) -> Environments:
    smoke = {"command": ["sh", "-c", "exit $(cat smoke)"], "interval": "10s", "timeout": "5s"}
    prod: dict[str, Any] = {"checks": {"smoke": smoke}}
    if health:
        prod["health"] = {"checks": ["smoke"], "failure_limit": 2}
    if verify:
        prod["verify"] = verify
    return Environments.model_validate({"staging": {}, "production": prod})


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "smoke").write_text("0")
    return tmp_path


@pytest.fixture
def open_stores(db_url: str) -> Iterator[Callable[[], AnalysisStore]]:
    opened: list[SqlStore] = []

    def make() -> AnalysisStore:
        store = SqlStore(db_url)
        opened.append(store)
        return AnalysisStore(store)

    yield make
    for store in opened:
        store.dispose()


def loop(
    store: AnalysisStore, envs: Environments, workdir: Path, clock: Clock, probe: Probe, **kw: Any
) -> AnalysisLoop:
    return AnalysisLoop(store, envs, db=in_thread, workdir=workdir, measure=probe, clock=clock, **kw)


async def test_two_loops_racing_on_the_same_due_check_measure_it_once(
    open_stores: Callable[[], AnalysisStore], workdir: Path
) -> None:
    envs, clock, probe = environments(), Clock(), Probe()
    one, two = (
        loop(open_stores(), envs, workdir, clock, probe),
        loop(open_stores(), envs, workdir, clock, probe),
    )
    await one.db(one.analyses.ensure_health, one.watched, T0)
    await two.db(two.analyses.ensure_health, two.watched, T0)  # (both start: one watch)
    for step in range(3):
        clock.now = T0 + timedelta(seconds=10 * step)
        rounds = await asyncio.gather(one.tick(), two.tick())
        assert sum(len(r.measured) for r in rounds) == 1
    assert probe.calls == ["smoke"] * 3
    assert len(one.analyses.recent("production", ["smoke"], 10)["smoke"]) == 3


async def test_a_failing_health_check_moves_the_environment_to_degraded_unhealthy_and_back(
    open_stores: Callable[[], AnalysisStore], workdir: Path
) -> None:
    envs, clock, probe = environments(), Clock(), Probe()
    store = open_stores()
    watcher = loop(store, envs, workdir, clock, probe)
    await watcher.db(store.ensure_health, watcher.watched, T0)
    assert store.health("production") is not None and store.health("production").state is Health.UNKNOWN  # type: ignore[union-attr]
    seen = []
    for step, code in enumerate(["0", "1", "1", "1", "0"]):
        (workdir / "smoke").write_text(code)
        clock.now = T0 + timedelta(seconds=10 * step, milliseconds=300)
        await watcher.tick()
        health = store.health("production")
        assert health is not None
        seen.append(health.state)
    assert seen == [Health.HEALTHY, Health.DEGRADED, Health.UNHEALTHY, Health.UNHEALTHY, Health.HEALTHY]
    history = store.history("production")
    assert [(c.from_state, c.to_state) for c in history] == [
        (Health.UNHEALTHY, Health.HEALTHY),
        (Health.DEGRADED, Health.UNHEALTHY),
        (Health.HEALTHY, Health.DEGRADED),
        (Health.UNKNOWN, Health.HEALTHY),
    ]
    assert history[1].reason == "smoke: exit 1 (2 in a row)"
    assert [c.id for c in store.history("production", before=history[1].id, limit=1)] == [history[2].id]
    events = [e for e in store.store.events_after(0) if e.name == "environment.health_changed"]
    assert [(e.subject_id, e.data["to_state"]) for e in events] == [
        ("production", "healthy"),
        ("production", "degraded"),
        ("production", "unhealthy"),
        ("production", "healthy"),
    ]
    # each measurement was due on the check's own schedule (every 10 s from T0), 0.3 s late
    assert list(watcher.lateness) == [pytest.approx(0.3)] * 5
    assert store.health("staging") is None  # (no checks: no health row)


async def test_a_claim_of_a_dead_process_lapses_and_another_measures_the_check(
    open_stores: Callable[[], AnalysisStore], workdir: Path
) -> None:
    envs, clock, probe = environments(), Clock(), Probe()
    store = open_stores()
    await in_thread(store.ensure_health, {"production": envs.policy("production").health}, T0)
    (claimed,) = store.claim_due(T0, "dead", 35, 10)  # ... and the process died
    survivor = loop(open_stores(), envs, workdir, clock, probe)
    clock.now = T0 + timedelta(seconds=30)
    assert (await survivor.tick()).measured == []
    clock.now = T0 + timedelta(seconds=36)
    done = await survivor.tick()
    assert [m.check for m in done.measured] == ["smoke"]
    assert store.record(claimed.analysis_id, "smoke", "dead", done.measured[0], T0) is None  # too late


VERIFY = {"checks": ["smoke"], "for": "60s", "failure_limit": 2}


def start_verification(store: AnalysisStore, envs: Environments, at: datetime) -> str:
    """As the engine does: inside a run's transaction."""
    policy = envs.policy("production").verify
    assert policy is not None
    with store.store.transaction() as tx:
        return tx.start_analysis("v-1", "production", "run-1", 0, policy, at).id


async def test_a_restart_resumes_a_verification_with_its_tallies_and_deadline_and_fails_it(
    open_stores: Callable[[], AnalysisStore], workdir: Path
) -> None:
    envs, clock, probe = environments(VERIFY, health=False), Clock(), Probe()
    first = open_stores()
    analysis_id = start_verification(first, envs, T0)
    (workdir / "smoke").write_text("1")
    verdicts: list[tuple[str, AnalysisStatus, str]] = []

    current = [first]

    async def on_verdict(analysis: Any, status: AnalysisStatus, reason: str) -> None:
        """As the engine does: the verdict ends the analysis in the run's transaction."""
        verdicts.append((analysis.id, status, reason))
        assert current[-1].end(analysis.id, status, reason, "shipyard", clock.now)

    before = loop(first, envs, workdir, clock, probe, on_verdict=on_verdict)
    clock.now = T0 + timedelta(milliseconds=200)
    assert len((await before.tick()).measured) == 1
    await before.stop()

    after_store = open_stores()  # a new process on the same database
    current.append(after_store)
    after = loop(after_store, envs, workdir, clock, probe, on_verdict=on_verdict)
    found = after_store.analysis(analysis_id)
    assert found is not None
    analysis, tallies = found
    assert analysis.deadline == T0 + timedelta(seconds=60) and tallies["smoke"].failed == 1
    clock.now = T0 + timedelta(seconds=10, milliseconds=500)
    done = await after.tick()
    assert verdicts == [(analysis_id, AnalysisStatus.FAILED, "smoke: exit 1 at 12:00:10, twice")]
    assert [(a.id, s) for a, s, _ in done.verdicts] == [(analysis_id, AnalysisStatus.FAILED)]
    ended = after_store.analysis(analysis_id)
    assert ended is not None and ended[0].status is AnalysisStatus.FAILED and ended[0].ended_by == "shipyard"
    assert [m.result for m in after_store.measurements(analysis_id)] == [CheckResult.FAILED] * 2
    clock.now = T0 + timedelta(seconds=20)
    assert (await after.tick()).measured == []  # an ended analysis is measured no more
    assert not after_store.end(analysis_id, AnalysisStatus.CANCELED, "too late", "alice", clock.now)


@pytest.mark.parametrize(
    "verify_for",
    [
        25,  # between two measurements
        30,  # the example's for: 2m with interval 30s: the last due time is the deadline itself
    ],
)
async def test_a_healthy_verification_passes_at_its_deadline_counting_every_measurement(
    open_stores: Callable[[], AnalysisStore], workdir: Path, verify_for: int
) -> None:
    """The deadline alone decides (nothing is measured at it), and the verdict counts every
    measurement stored."""
    envs, clock, probe = environments({**VERIFY, "for": f"{verify_for}s"}, health=False), Clock(), Probe()
    store = open_stores()
    analysis_id = start_verification(store, envs, T0)
    verifier = loop(store, envs, workdir, clock, probe)
    for seconds in (0, 10, 20):
        clock.now = T0 + timedelta(seconds=seconds)
        assert (await verifier.tick()).verdicts == []
    clock.now = T0 + timedelta(seconds=verify_for)
    done = await verifier.tick()
    assert done.measured == [] and probe.calls == ["smoke"] * 3
    assert [(a.id, s, r) for a, s, r in done.verdicts] == [
        (analysis_id, AnalysisStatus.PASSED, "every check passed: smoke 3 times")
    ]
    assert len(store.measurements(analysis_id)) == 3


async def test_health_watches_follow_the_configuration(
    open_stores: Callable[[], AnalysisStore], workdir: Path
) -> None:
    store = open_stores()
    watched = environments().policy("production").health
    store.ensure_health({"production": watched}, T0)
    store.ensure_health({"production": watched}, T0)  # (again: nothing new)
    assert [d.check for d in store.claim_due(T0, "me", 30, 10)] == ["smoke"]
    store.release("me")
    store.ensure_health({"production": None}, T0)  # the watch was removed
    assert store.claim_due(T0 + timedelta(hours=1), "me", 30, 10) == []
    found = store.analysis(health_analysis_id("production"))
    assert found is not None and found[1] == {}


async def test_a_check_added_to_the_watch_makes_a_healthy_environment_degraded_until_measured(
    open_stores: Callable[[], AnalysisStore], workdir: Path
) -> None:
    """A passing check's measurement does not recompute health (it cannot change it), so a
    watch changed at start-up is recomputed there: the new check shows at once."""
    envs, clock, probe = environments(), Clock(), Probe()
    store = open_stores()
    watcher = loop(store, envs, workdir, clock, probe)
    await watcher.db(store.ensure_health, watcher.watched, T0)
    for step in range(2):
        clock.now = T0 + timedelta(seconds=10 * step)
        await watcher.tick()
    assert store.health("production").state is Health.HEALTHY  # type: ignore[union-attr]
    smoke = envs.policy("production").checks["smoke"].model_dump(mode="json")
    more = Environments.model_validate(
        {"production": {"checks": {"smoke": smoke, "again": smoke}, "health": ["smoke", "again"]}}
    )
    store.ensure_health({"production": more.policy("production").health}, T0 + timedelta(seconds=15))
    health = store.health("production")
    assert health is not None and health.state is Health.DEGRADED
    assert health.reason == "again: not measured yet"


async def test_many_checks_due_at_once_are_claimed_as_room_frees_not_a_round_later(
    open_stores: Callable[[], AnalysisStore], workdir: Path
) -> None:
    """20 checks due together, 4 measured at a time, rounds 2 s apart: all are measured well
    before the 10 s that claiming 4 per round would take."""
    smoke = {"command": ["true"], "interval": "60s", "timeout": "5s"}
    envs = Environments.model_validate(
        {f"env-{i}": {"checks": {"smoke": smoke}, "health": ["smoke"]} for i in range(20)}
    )
    store = open_stores()
    # all due at once (as a verification's checks are; health watches are spread: see below)
    store.ensure_health({env: policy.health for env, policy in envs.root.items()}, utcnow())
    watcher = AnalysisLoop(store, envs, db=in_thread, workdir=workdir, every_s=2.0, concurrency=4)
    started = asyncio.get_running_loop().time()
    await watcher.start()
    try:
        while len([h for h in store.healths().values() if h.state is Health.HEALTHY]) < 20:
            assert asyncio.get_running_loop().time() - started < 4.0, "not measured in time"
            await asyncio.sleep(0.05)
    finally:
        await watcher.stop()
    assert len(watcher.lateness) == 20 and max(watcher.lateness) < 2.0


def test_health_watches_start_spread_over_their_interval_not_all_at_once(
    open_stores: Callable[[], AnalysisStore],
) -> None:
    """200 environments' checks every 10 s come due evenly over the 10 s, each at a spot of its
    own that a restart keeps, so a server measures a steady trickle instead of bursts."""
    watched = {f"env-{i}": HealthWatch(checks=["smoke"]) for i in range(200)}
    intervals = {env: {"smoke": 10.0} for env in watched}
    store = open_stores()
    store.ensure_health(watched, T0, intervals)
    firsts = sorted(
        (d.due_at - T0).total_seconds() for d in store.claim_due(T0 + timedelta(seconds=10), "me", 30, 1000)
    )
    assert len(firsts) == 200 and 0 <= firsts[0] and firsts[-1] < 10
    per_second = [sum(1 for f in firsts if k <= f < k + 1) for k in range(10)]
    assert max(per_second) <= 40, per_second  # about 20 a second, never most of them at once
    assert spread("env-7", "smoke", 10.0) == spread("env-7", "smoke", 10.0)  # the same spot every time


def test_pruning_drops_old_health_measurements_and_keeps_every_verifications(
    open_stores: Callable[[], AnalysisStore],
) -> None:
    store = open_stores()
    old = T0 - timedelta(days=30)
    with store.store.transaction() as tx:
        for analysis in ("health:production", "verify:run-1:0"):
            for at in (old, T0):
                tx.conn.execute(
                    sa.insert(MEASUREMENT).values(
                        analysis_id=analysis,
                        environment="production",
                        check="smoke",
                        at=at,
                        result="passed",
                        value="1",
                        detail="",
                        took=0.0,
                    )
                )
    assert store.prune_health(T0 - timedelta(days=14), 1000) == 1
    assert [m.at for m in store.measurements("health:production")] == [T0]
    assert [m.at for m in store.measurements("verify:run-1:0")] == [old, T0]  # the run's evidence
    assert store.prune_health(T0 - timedelta(days=14), 1000) == 0


def test_a_long_verification_shows_its_latest_measurements_the_ones_that_decided(
    open_stores: Callable[[], AnalysisStore],
) -> None:
    """More measurements than are shown (a 10m verification measured every second): the latest
    are shown, oldest first, so the failure that ended it is among them."""
    store = open_stores()
    rows = [
        {
            "analysis_id": "verify:run-1:0",
            "environment": "production",
            "check": "smoke",
            "at": T0 + timedelta(seconds=i),
            "result": "failed" if i == 600 else "passed",
            "value": str(i),
            "detail": "",
            "took": 0.0,
        }
        for i in range(601)
    ]
    with store.store.transaction() as tx:
        tx.conn.execute(sa.insert(MEASUREMENT), rows)
    shown = store.measurements("verify:run-1:0", limit=500)
    assert [m.value for m in shown] == [str(i) for i in range(101, 601)]
    assert shown[-1].result is CheckResult.FAILED


def test_a_batch_recorded_at_once_stores_and_changes_what_one_by_one_would(
    open_stores: Callable[[], AnalysisStore],
) -> None:
    """``record_many``: every measurement of the checks still held is stored and counted, each
    health change is written as when each measurement is recorded alone (``production`` goes
    unknown → degraded → healthy within the batch), and a check no longer held stores nothing."""
    store = open_stores()
    two = HealthWatch(checks=["smoke", "ready"])
    store.ensure_health({"production": two, "staging": HealthWatch(checks=["smoke"])}, T0)
    held = store.claim_due(T0, "me", 30, 10)
    assert sorted((d.environment, d.check) for d in held) == [
        ("production", "ready"),
        ("production", "smoke"),
        ("staging", "smoke"),
    ]
    store.release("me")
    mine = store.claim_due(T0, "me", 30, 2)  # production's two; staging's goes to another
    assert {d.environment for d in mine} == {"production"}
    (theirs,) = store.claim_due(T0, "them", 30, 10)
    at = T0 + timedelta(seconds=1)
    passed = [
        Measurement(d.check, at + timedelta(milliseconds=i), CheckResult.PASSED, "1", "ok")
        for i, d in enumerate(mine)
    ]
    taken = [
        Taken(d.analysis_id, d.check, m, T0 + timedelta(seconds=10), two)
        for d, m in zip(mine, passed, strict=True)
    ]
    stolen = Taken(
        theirs.analysis_id, "smoke", passed[0], T0 + timedelta(seconds=10), HealthWatch(checks=["smoke"])
    )
    done = store.record_many("me", [taken[0], stolen, taken[1]])
    assert done[1] is None  # (not ours: nothing of it is stored)
    first, second = done[0], done[2]
    assert first is not None and second is not None
    assert first.health_change is not None and second.health_change is not None
    assert (first.health_change.from_state, first.health_change.to_state) == (Health.UNKNOWN, Health.DEGRADED)
    assert (second.health_change.from_state, second.health_change.to_state) == (
        Health.DEGRADED,
        Health.HEALTHY,
    )
    assert [(c.from_state, c.to_state) for c in store.history("production")] == [
        (Health.DEGRADED, Health.HEALTHY),
        (Health.UNKNOWN, Health.DEGRADED),
    ]
    events = [
        e.data["to_state"] for e in store.store.events_after(0) if e.name == "environment.health_changed"
    ]
    assert events == ["degraded", "healthy"]
    assert len(store.measurements(health_analysis_id("production"))) == 2
    assert store.measurements(health_analysis_id("staging")) == []
    found = store.analysis(health_analysis_id("production"))
    assert found is not None and {c: t.measured for c, t in found[1].items()} == {"smoke": 1, "ready": 1}
    # let go, and due again at their next time (staging's is still held by the other)
    assert store.claim_due(T0 + timedelta(seconds=9), "me", 30, 10) == []
    assert len(store.claim_due(T0 + timedelta(seconds=10), "me", 30, 10)) == 2


async def test_a_round_is_recorded_in_one_transaction_not_one_per_measurement(
    open_stores: Callable[[], AnalysisStore], workdir: Path, web_service: WebService
) -> None:
    """20 http checks due together are recorded in one transaction (the loop waits for the
    measurements under way), and every one of them is stored."""
    check = {"http": {"url": f"{web_service.url}/healthz"}, "interval": "10s", "timeout": "5s"}
    envs = Environments.model_validate(
        {f"env-{i}": {"checks": {"smoke": check}, "health": ["smoke"]} for i in range(20)}
    )
    store = Batches(open_stores().store)
    store.ensure_health({env: policy.health for env, policy in envs.root.items()}, T0)
    clock = Clock()
    watcher = AnalysisLoop(store, envs, db=in_thread, workdir=workdir, clock=clock, linger_s=5.0)
    clock.now = T0 + timedelta(seconds=1)
    done = await watcher.tick()
    await watcher.stop()
    assert len(done.measured) == 20 and store.batches == [20]
    assert all(h.state is Health.HEALTHY for h in store.healths().values())


class Batches(AnalysisStore):
    """The store, noting the size of each batch it records."""

    def __init__(self, store: SqlStore) -> None:
        super().__init__(store)
        self.batches: list[int] = []

    def record_many(self, holder: str, taken: Any) -> Any:
        self.batches.append(len(taken))
        return super().record_many(holder, taken)


async def test_a_verification_judged_from_a_batch_is_judged_once(
    open_stores: Callable[[], AnalysisStore], workdir: Path
) -> None:
    """Two checks of one verification failing in one batch make one verdict (one rollback)."""
    smoke = {"command": ["sh", "-c", "exit $(cat smoke)"], "interval": "10s", "timeout": "5s"}
    envs = Environments.model_validate(
        {
            "production": {
                "checks": {"smoke": smoke, "again": smoke},
                "verify": {"checks": ["smoke", "again"], "for": "60s", "failure_limit": 1},
            }
        }
    )
    (workdir / "smoke").write_text("1")
    store, clock, verdicts = open_stores(), Clock(), []

    async def on_verdict(analysis: Any, status: AnalysisStatus, reason: str) -> None:
        verdicts.append(status)
        store.end(analysis.id, status, reason, "shipyard", clock.now)

    policy = envs.policy("production").verify
    assert policy is not None
    with store.store.transaction() as tx:
        analysis_id = tx.start_analysis("v-1", "production", "run-1", 0, policy, T0).id
    store = Batches(store.store)
    verifier = loop(store, envs, workdir, clock, Probe(), on_verdict=on_verdict, linger_s=5.0)
    await verifier.tick()
    assert store.batches == [2] and verdicts == [AnalysisStatus.FAILED]
    assert len(store.measurements(analysis_id)) == 2


async def test_an_initial_delay_holds_the_first_measurement_and_moves_the_deadline(
    open_stores: Callable[[], AnalysisStore], workdir: Path
) -> None:
    """A rate over a window longer than the interval would still see the release before: the
    first measurement waits ``initial_delay``, and the verification lasts that plus ``for``."""
    envs, clock, probe = environments({**VERIFY, "initial_delay": "15s"}, health=False), Clock(), Probe()
    store = open_stores()
    analysis_id = start_verification(store, envs, T0)
    found = store.analysis(analysis_id)
    assert found is not None and found[0].deadline == T0 + timedelta(seconds=75)
    verifier = loop(store, envs, workdir, clock, probe)
    clock.now = T0 + timedelta(seconds=14)
    assert (await verifier.tick()).measured == [] and probe.calls == []
    clock.now = T0 + timedelta(seconds=15)
    assert len((await verifier.tick()).measured) == 1 and probe.calls == ["smoke"]


# -- the configuration changed under a running analysis ------------------------------------------


async def test_a_verification_whose_checks_left_the_configuration_ends_inconclusive_not_blind(
    open_stores: Callable[[], AnalysisStore], workdir: Path
) -> None:
    """A restart with ``verify`` and its check removed: the due check is recorded as an error
    saying so (nothing is measured), and the verification is ended inconclusive by the loop
    itself (no engine here), for a person to decide."""
    store, clock, probe = open_stores(), Clock(), Probe()
    analysis_id = start_verification(store, environments(VERIFY, health=False), T0)
    bare = Environments.model_validate({"production": {}})
    verifier = loop(store, bare, workdir, clock, probe)
    clock.now = T0 + timedelta(seconds=1)
    done = await verifier.tick()
    assert probe.calls == []
    (m,) = store.measurements(analysis_id)
    assert (m.result, m.detail) == (CheckResult.ERROR, "smoke: no such check is configured now")
    assert [(a.id, s, r) for a, s, r in done.verdicts] == [
        (analysis_id, AnalysisStatus.INCONCLUSIVE, "production has no verification configured now")
    ]
    found = store.analysis(analysis_id)
    assert found is not None and found[0].status is AnalysisStatus.INCONCLUSIVE
    assert found[0].ended_by == "shipyard"


async def test_a_verification_whose_check_was_renamed_since_ends_inconclusive_not_failed(
    open_stores: Callable[[], AnalysisStore], workdir: Path
) -> None:
    """A restart with ``verify`` kept but its check renamed: the old name cannot be measured,
    which says nothing about the release, so the verification is not left to fail on errors in
    a row (and roll back): it ends inconclusive at once, for a person to decide."""
    store, clock, probe = open_stores(), Clock(), Probe()
    analysis_id = start_verification(store, environments(VERIFY, health=False), T0)
    renamed = Environments.model_validate(
        {
            "production": {
                "checks": {"probe": {"command": ["true"], "interval": "10s", "timeout": "5s"}},
                "verify": {**VERIFY, "checks": ["probe"]},
            }
        }
    )
    verifier = loop(store, renamed, workdir, clock, probe)
    clock.now = T0 + timedelta(seconds=1)
    done = await verifier.tick()
    assert probe.calls == []
    assert [(a.id, s, r) for a, s, r in done.verdicts] == [
        (analysis_id, AnalysisStatus.INCONCLUSIVE, "smoke: no such check is configured now")
    ]


async def test_a_canary_steps_analysis_is_judged_by_the_steps_limits_not_the_environments(
    open_stores: Callable[[], AnalysisStore], workdir: Path
) -> None:
    """A rollout's analysis keeps its step's limits: it fails on the first failed measurement
    though the environment verifies nothing (whose rule would end it inconclusive)."""
    store, clock, probe = open_stores(), Clock(), Probe()
    envs = environments(health=False)
    step = VerifyPolicy.model_validate({"checks": ["smoke"], "for": "60s", "failure_limit": 1})
    with store.store.transaction() as tx:
        analysis_id = tx.start_analysis("c-1", "production", "run-1", 0, step, T0, AnalysisKind.ROLLOUT).id
    (workdir / "smoke").write_text("1")
    canary = loop(store, envs, workdir, clock, probe)
    clock.now = T0 + timedelta(seconds=2)
    done = await canary.tick()
    assert probe.calls == ["smoke"]
    assert [(a.id, s, r) for a, s, r in done.verdicts] == [
        (analysis_id, AnalysisStatus.FAILED, "smoke: exit 1 at 12:00:02, once")
    ]


async def test_a_verification_a_person_ends_while_it_is_judged_is_left_as_they_ended_it(
    open_stores: Callable[[], AnalysisStore], workdir: Path
) -> None:
    """The deadline came, and in the moment between the loop reading the verification and
    ending it, alice canceled the run: her ending stands and the loop reports no verdict."""
    store, clock = open_stores(), Clock()
    envs = environments({**VERIFY, "for": "10s"}, health=False)
    analysis_id = start_verification(store, envs, T0)
    await loop(store, envs, workdir, clock, Probe()).tick()  # (measured, so the deadline alone decides)

    async def alice_meanwhile(fn: Callable[..., Any], *args: Any) -> Any:
        found = await in_thread(fn, *args)
        if fn == store.past_deadline:
            assert [a.id for a, _ in found] == [analysis_id]  # (read while it ran)
            assert store.end(analysis_id, AnalysisStatus.CANCELED, "run canceled", "alice", clock.now)
        return found

    verifier = AnalysisLoop(store, envs, db=alice_meanwhile, workdir=workdir, measure=Probe(), clock=clock)
    clock.now = T0 + timedelta(seconds=10)
    done = await verifier.tick()
    assert done.verdicts == []
    found = store.analysis(analysis_id)
    assert found is not None
    assert (found[0].status, found[0].ended_by) == (AnalysisStatus.CANCELED, "alice")


# -- what the loop tells and keeps -------------------------------------------------------------------


async def test_each_health_change_is_handed_on_as_it_is_recorded(
    open_stores: Callable[[], AnalysisStore], workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    envs, clock, store = environments(), Clock(), open_stores()
    told: list[tuple[str, Health, Health, str]] = []

    async def on_health_change(change: Any) -> None:
        told.append((change.environment, change.from_state, change.to_state, change.reason))

    watcher = loop(store, envs, workdir, clock, Probe(), on_health_change=on_health_change)
    await watcher.db(store.ensure_health, watcher.watched, T0)
    with caplog.at_level(logging.INFO, logger="core.runtime.analyses"):
        for step, code in enumerate(["0", "0", "1"]):
            (workdir / "smoke").write_text(code)
            clock.now = T0 + timedelta(seconds=10 * step)
            await watcher.tick()
    assert told == [
        ("production", Health.UNKNOWN, Health.HEALTHY, told[0][3]),
        ("production", Health.HEALTHY, Health.DEGRADED, "smoke: exit 1 (1 of 2 in a row)"),
    ]
    assert [c.to_state for c in store.history("production")] == [Health.DEGRADED, Health.HEALTHY]
    assert "production is degraded (was healthy): smoke: exit 1 (1 of 2 in a row)" in caplog.messages


async def test_lateness_quantiles_come_from_when_measurements_were_taken_against_when_due(
    open_stores: Callable[[], AnalysisStore], workdir: Path
) -> None:
    envs, clock, store = environments(), Clock(), open_stores()
    watcher = loop(store, envs, workdir, clock, Probe())
    assert watcher.lateness_quantile(0.5) is None  # nothing measured yet
    await watcher.db(store.ensure_health, watcher.watched, T0)
    for step, late_ms in enumerate([400, 100, 300, 200]):
        clock.now = T0 + timedelta(seconds=10 * step, milliseconds=late_ms)
        await watcher.tick()
    assert [watcher.lateness_quantile(q) for q in (0, 0.25, 0.5, 0.75, 1)] == [
        pytest.approx(s) for s in (0.1, 0.1, 0.2, 0.3, 0.4)
    ]


# -- faults ------------------------------------------------------------------------------------------


class Faults:
    """Runs store calls off the loop as ``in_thread`` does, but fails the next calls of the
    methods named (each raising what it was given, once), noting each fault it caused."""

    def __init__(self, **planned: list[Exception]) -> None:
        self.planned = planned
        self.raised: list[tuple[str, str]] = []

    async def __call__(self, fn: Callable[..., Any], *args: Any) -> Any:
        name = getattr(fn, "__name__", "")
        if self.planned.get(name):
            exc = self.planned[name].pop(0)
            self.raised.append((name, type(exc).__name__))
            raise exc
        return await in_thread(fn, *args)


async def test_a_measurement_whose_recording_fails_is_measured_again_once_its_claim_lapses(
    open_stores: Callable[[], AnalysisStore], workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    envs, clock, probe, store = environments(), Clock(), Probe(), open_stores()
    faults = Faults(record_many=[RuntimeError("disk full"), DatabaseUnreachable("database is down")])
    watcher = AnalysisLoop(store, envs, db=faults, workdir=workdir, measure=probe, clock=clock)
    await watcher.db(store.ensure_health, watcher.watched, T0)
    with caplog.at_level(logging.DEBUG, logger="core.runtime.analyses"):
        clock.now = T0 + timedelta(seconds=1)
        assert (await watcher.tick()).measured == []  # measured, but not recorded
        assert "measuring smoke in production failed" in caplog.messages
        clock.now += timedelta(seconds=watcher.lease_s + 1)  # the claim lapsed: due again
        assert (await watcher.tick()).measured == []
        assert "a measurement of smoke waits for the database (its claim lapses)" in caplog.messages
    assert faults.raised == [("record_many", "RuntimeError"), ("record_many", "DatabaseUnreachable")]
    assert store.measurements(health_analysis_id("production")) == []
    clock.now += timedelta(seconds=watcher.lease_s + 1)
    assert len((await watcher.tick()).measured) == 1
    assert probe.calls == ["smoke"] * 3
    assert len(store.measurements(health_analysis_id("production"))) == 1


async def test_a_failed_round_is_retried_and_the_loop_goes_on_measuring(
    open_stores: Callable[[], AnalysisStore], workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    envs, store = environments(), open_stores()
    faults = Faults(claim_due=[RuntimeError("deadlock detected"), DatabaseUnreachable("database is down")])
    store.ensure_health({"production": envs.policy("production").health}, utcnow())
    watcher = AnalysisLoop(store, envs, db=faults, workdir=workdir, every_s=0.02)
    started = asyncio.get_running_loop().time()
    with caplog.at_level(logging.DEBUG, logger="core.runtime.analyses"):
        await watcher.start()
        try:
            while (h := store.health("production")) is None or h.state is not Health.HEALTHY:
                assert asyncio.get_running_loop().time() - started < 5.0, "not measured after the faults"
                await asyncio.sleep(0.02)
        finally:
            await watcher.stop()
    assert faults.raised == [("claim_due", "RuntimeError"), ("claim_due", "DatabaseUnreachable")]
    failed = [r for r in caplog.records if r.getMessage() == "analysis round failed; retrying"]
    assert len(failed) == 1 and failed[0].exc_info is not None
    assert str(failed[0].exc_info[1]) == "deadlock detected"
    assert "analysis loop waits for the database" in caplog.messages


async def test_stopping_when_the_checks_cannot_be_let_go_leaves_them_to_lapse(
    open_stores: Callable[[], AnalysisStore], workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    envs, clock, store = environments(), Clock(), open_stores()
    faults = Faults(claim_due=[], release=[DatabaseUnreachable("database is down")])
    watcher = AnalysisLoop(store, envs, db=faults, workdir=workdir, measure=Probe(), clock=clock)
    await watcher.db(store.ensure_health, watcher.watched, T0)
    held = store.claim_due(T0, watcher.holder, 35, 10)  # (as a round under way would hold it)
    assert [d.check for d in held] == ["smoke"]
    with caplog.at_level(logging.WARNING, logger="core.runtime.analyses"):
        await watcher.stop()  # does not raise
    assert faults.raised == [("release", "DatabaseUnreachable")]
    assert caplog.messages == ["could not release the checks this process held"]
    assert store.claim_due(T0 + timedelta(seconds=34), "other", 35, 10) == []  # still held ...
    assert len(store.claim_due(T0 + timedelta(seconds=36), "other", 35, 10)) == 1  # ... until it lapses


async def test_a_slow_measurement_does_not_hold_back_the_recording_of_the_others(
    open_stores: Callable[[], AnalysisStore], workdir: Path
) -> None:
    """Measurements finishing together are recorded together, but one still under way is waited
    for ``linger_s`` at most: the fast check's measurement is recorded (and counted) first."""
    fast = {"command": ["true"], "interval": "10s", "timeout": "5s"}
    slow = {"command": ["sleep", "0.4"], "interval": "10s", "timeout": "5s"}
    envs = Environments.model_validate(
        {"production": {"checks": {"fast": fast, "slow": slow}, "health": ["fast", "slow"]}}
    )
    store, clock = Batches(open_stores().store), Clock()
    store.ensure_health({"production": envs.policy("production").health}, T0)
    watcher = AnalysisLoop(store, envs, db=in_thread, workdir=workdir, clock=clock, linger_s=0.05)
    clock.now = T0 + timedelta(seconds=10)
    done = await watcher.tick()
    assert store.batches == [1, 1]
    assert [m.check for m in done.measured] == ["fast", "slow"]
    assert len(store.measurements(health_analysis_id("production"))) == 2


async def test_a_measurement_under_way_at_the_deadline_counts_in_the_verdict(
    open_stores: Callable[[], AnalysisStore], workdir: Path
) -> None:
    """The last measurement was due before the deadline but is still under way when the deadline
    comes (a slow target): the verdict waits for it, so its failure is not dropped for a pass."""
    slow = {
        "command": ["sh", "-c", "sleep $(cat delay); exit $(cat smoke)"],
        "interval": "10s",
        "timeout": "5s",
    }
    verify = {"checks": ["smoke"], "for": "25s", "failure_limit": 1}
    envs = Environments.model_validate({"production": {"checks": {"smoke": slow}, "verify": verify}})
    (workdir / "delay").write_text("0")
    store, clock = open_stores(), Clock()
    analysis_id = start_verification(store, envs, T0)
    verifier = loop(store, envs, workdir, clock, Probe())
    for seconds in (0, 10):
        clock.now = T0 + timedelta(seconds=seconds)
        assert len((await verifier.tick()).measured) == 1
    (workdir / "delay").write_text("0.5")
    (workdir / "smoke").write_text("1")
    clock.now = T0 + timedelta(seconds=20)
    last = asyncio.create_task(verifier.tick())  # due at 20 s, under way past the deadline
    await asyncio.sleep(0.2)
    clock.now = T0 + timedelta(seconds=25)
    assert (await verifier.tick()).verdicts == []  # the deadline waits for it ...
    done = await last
    assert [(a.id, s, r) for a, s, r in done.verdicts] == [
        (analysis_id, AnalysisStatus.FAILED, "smoke: exit 1 at 12:00:20, once")
    ]  # ... and it decides
    assert [m.result for m in store.measurements(analysis_id)] == [
        CheckResult.PASSED,
        CheckResult.PASSED,
        CheckResult.FAILED,
    ]


async def test_the_loops_http_checks_keep_no_cookies_between_measurements(
    open_stores: Callable[[], AnalysisStore], workdir: Path
) -> None:
    """A target that sets a session cookie on its first answer, and answers a client that sends
    it back as a logged-in one (here: 503), is measured as a fresh client every time. (By a host
    name: aiohttp's default jar drops cookies from bare IP addresses anyway.)"""
    from aiohttp import web

    from tests.e2e.server import free_port

    cookies_seen: list[str | None] = []

    async def page(request: web.Request) -> web.Response:
        cookies_seen.append(request.headers.get("Cookie"))
        if "session" in request.cookies:
            return web.Response(status=503, text="logged in")
        response = web.Response(text="anonymous")
        response.set_cookie("session", "s3cret")
        return response

    app = web.Application()
    app.router.add_get("/healthz", page)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    smoke = {"http": {"url": f"http://localhost:{port}/healthz"}, "interval": "10s", "timeout": "5s"}
    envs = Environments.model_validate({"production": {"checks": {"smoke": smoke}, "health": ["smoke"]}})
    clock, store = Clock(), open_stores()
    watcher = loop(store, envs, workdir, clock, Probe())
    await watcher.db(store.ensure_health, watcher.watched, T0)
    await watcher.start()  # (the loop's own session, shared by its measurements)
    try:
        for step in range(3):
            clock.now = T0 + timedelta(seconds=10 * step)
            deadline = asyncio.get_running_loop().time() + 20
            while len(cookies_seen) <= step:
                assert asyncio.get_running_loop().time() < deadline, "not measured in time"
                await asyncio.sleep(0.05)
    finally:
        await watcher.stop()
        await runner.cleanup()
    assert cookies_seen == [None, None, None]
    results = [m.result for m in store.recent("production", ["smoke"], 10)["smoke"]]
    assert results == [CheckResult.PASSED] * 3
