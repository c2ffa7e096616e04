"""One deployment at a time per environment, in arrival order, with real subprocesses: the
queue, supersede, freezes (waiting through one and starting when it ends, break glass), and
the environments' protection rules that no pipeline file can weaken."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.commands import ApproveGate, MoveToFront, TriggerRun
from core.environments import Environments
from core.model import Actor
from core.runtime.service import Service
from core.states import RunStatus
from storage.store import SqlStore
from tests.engine.conftest import StartShipyard, send, wait_for
from tests.helpers import ALICE, CAROL
from tests.pipelines import one_deploy

ADMIN = Actor("admin", "rest")

DEPLOY = """
name: {name}
stages:
  - name: build
    jobs: [{{name: compile, run: "true"}}]
  - name: production
    environment: production
    jobs:
      - name: deploy
        run: |
          echo "start $SHIPYARD_RUN_NUMBER $(date +%s.%N)" >> {ledger}
          sleep 0.05
          echo "end $SHIPYARD_RUN_NUMBER $(date +%s.%N)" >> {ledger}
"""


def _spans(ledger: Path) -> list[tuple[int, float, float]]:
    starts: dict[int, float] = {}
    spans = []
    for line in ledger.read_text().splitlines():
        what, number, at = line.split()
        if what == "start":
            starts[int(number)] = float(at)
        else:
            spans.append((int(number), starts[int(number)], float(at)))
    return sorted(spans, key=lambda s: s[1])


async def test_twenty_concurrent_runs_deploy_one_at_a_time_in_arrival_order(
    db_url: str, start_shipyard: StartShipyard, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    shipyard = await start_shipyard(
        db_url, {"web": DEPLOY.format(name="web", ledger=ledger)}, runner_capacity=8
    )
    runs = []
    for _ in range(20):  # one after another: their arrival order is their number order
        decision = await send(shipyard, TriggerRun(pipeline="web", actor=ALICE))
        assert decision.state is not None
        runs.append(decision.state.run.id)
    states = await asyncio.gather(*(wait_for(shipyard, r, timeout=60) for r in runs))
    assert [s.run.status for s in states] == [RunStatus.SUCCEEDED] * 20
    spans = _spans(ledger)
    for (_, _, end), (_, start, _) in itertools.pairwise(spans):
        assert start >= end, "two deployments to production overlapped"
    # arrival: the moment each run reached the production stage (queued, or admitted at once)
    arrived = {
        s.run.number: min(
            e.seq
            for e in shipyard.store.events_after(0, 1000, s.run.id)
            if e.subject == "stage"
            and e.data.get("stage") == "production"
            and e.to_status in ("queued", "running")
        )
        for s in states
    }
    assert [n for n, _, _ in spans] == sorted(arrived, key=arrived.__getitem__), "deployed in arrival order"
    queued = [
        e for s in states for e in shipyard.store.events_after(0, 1000, s.run.id) if e.name == "run.queued"
    ]
    assert queued, "later runs waited in the queue"
    assert "waiting for production" in str(queued[0].data.get("reason", ""))


HOLDING = """
name: web
stages:
  - name: production
    environment: production
    jobs:
      - name: deploy
        run: |
          if [ "$SHIPYARD_RUN_NUMBER" = 1 ]; then while [ ! -e {release} ]; do sleep 0.02; done; fi
          echo "$SHIPYARD_RUN_NUMBER" >> {ledger}
"""


async def _queued(shipyard, count: int) -> list[str]:  # type: ignore[no-untyped-def]
    ids = []
    for _ in range(count):
        decision = await send(shipyard, TriggerRun(pipeline="web", actor=ALICE))
        assert decision.state is not None
        ids.append(decision.state.run.id)
    return ids


async def test_supersede_cancels_older_queued_runs_of_the_same_pipeline(
    db_url: str, start_shipyard: StartShipyard, tmp_path: Path
) -> None:
    release, ledger = tmp_path / "release", tmp_path / "ledger"
    config = Environments.model_validate({"production": {"concurrency": "supersede"}})
    shipyard = await start_shipyard(
        db_url, {"web": HOLDING.format(release=release, ledger=ledger)}, environments=config
    )
    first, second, third, fourth = await _queued(shipyard, 4)
    await wait_for(shipyard, first, lambda s: s.jobs[0].status == "running")
    for older, newer in ((second, ("web#3", "web#4")), (third, ("web#4",))):
        state = await wait_for(shipyard, older)
        assert state.run.status is RunStatus.CANCELED  # (the timer may run between two triggers)
        assert state.run.reason in {f"canceled by shipyard: superseded by {n}" for n in newer}
    assert (await wait_for(shipyard, fourth, lambda s: s.run.status is RunStatus.QUEUED)).run.reason == (
        "waiting for production: web#1 is deploying there"
    )
    release.touch()
    assert (await wait_for(shipyard, fourth)).run.status is RunStatus.SUCCEEDED
    assert ledger.read_text().split() == ["1", "4"]


async def test_a_run_waits_through_a_freeze_and_starts_when_it_ends_unless_it_breaks_glass(
    sqlite_url: str, start_shipyard: StartShipyard, tmp_path: Path
) -> None:
    release, ledger = tmp_path / "release", tmp_path / "ledger"
    release.touch()
    now = datetime.now(UTC)
    ends = now + timedelta(seconds=2)
    freeze = {
        "from": (now - timedelta(hours=1)).isoformat(),
        "to": ends.isoformat(),
        "reason": "release party",
    }
    config = Environments.model_validate({"production": {"freezes": [freeze]}})
    shipyard = await start_shipyard(
        sqlite_url, {"web": HOLDING.format(release=release, ledger=ledger)}, environments=config
    )
    [frozen] = await _queued(shipyard, 1)
    state = await wait_for(shipyard, frozen, lambda s: s.run.status is RunStatus.QUEUED)
    assert state.run.reason.startswith("waiting for production: frozen until ")
    assert "release party" in state.run.reason

    urgent = await send(shipyard, TriggerRun(pipeline="web", actor=ALICE, break_glass="prod is down"))
    assert urgent.state is not None and urgent.state.run.break_glass == "prod is down"
    assert (await wait_for(shipyard, urgent.state.run.id)).run.status is RunStatus.SUCCEEDED
    assert datetime.now(UTC) < ends, "break glass went through the freeze at once"

    done = await wait_for(shipyard, frozen, timeout=10)
    assert done.run.status is RunStatus.SUCCEEDED
    assert done.stages[0].started_at is not None and done.stages[0].started_at >= ends
    assert ledger.read_text().split() == ["2", "1"]


async def test_a_freeze_that_fails_runs_fails_them_saying_until_when(
    sqlite_url: str, start_shipyard: StartShipyard, tmp_path: Path
) -> None:
    freeze = {"every": "* * * * *", "until": "0 0 1 1 *", "reason": "year-end"}
    config = Environments.model_validate({"production": {"freezes": [freeze], "on_freeze": "fail"}})
    shipyard = await start_shipyard(
        sqlite_url, {"web": HOLDING.format(release=tmp_path, ledger=tmp_path / "l")}, environments=config
    )
    [run] = await _queued(shipyard, 1)
    state = await wait_for(shipyard, run)
    assert state.run.status is RunStatus.FAILED
    assert state.run.reason.startswith("production is frozen: frozen until ")
    assert "year-end" in state.run.reason


async def test_environment_rules_hold_whatever_the_pipeline_file_says(
    sqlite_url: str, start_shipyard: StartShipyard
) -> None:
    config = Environments.model_validate(
        {
            "production": {
                "pipelines": ["web", "api-*"],
                "branches": ["main"],
                "approvals": {"from": ["release-managers"], "count": 2},
            }
        }
    )
    pipelines = {n: one_deploy(n) for n in ("web", "batch")}
    shipyard = await start_shipyard(sqlite_url, pipelines, environments=config)

    other = await send(shipyard, TriggerRun(pipeline="batch", actor=ALICE, branch="main"))
    assert not other.accepted and other.refusal == "forbidden"
    assert "batch" in other.reason and "web, api-*" in other.reason
    branch = await send(shipyard, TriggerRun(pipeline="web", actor=ALICE, branch="feature/x"))
    assert not branch.accepted and "feature/x" in branch.reason and "main" in branch.reason

    ok = await send(shipyard, TriggerRun(pipeline="web", actor=ALICE, branch="main"))
    assert ok.state is not None
    gate = ok.state.gates[0]
    assert (gate.kind, gate.approvers, gate.min_approvals) == ("manual", ("release-managers",), 2)
    waiting = await wait_for(shipyard, ok.state.run.id, lambda s: s.run.status is RunStatus.WAITING)
    assert waiting.gates[0].status == "open"
    cold = SqlStore(sqlite_url)  # no cache: the gate the rule added must come back from the table
    try:
        reloaded = Service(cold).find_run(ok.state.run.id)
        assert reloaded is not None and [g.min_approvals for g in reloaded.gates] == [2]
    finally:
        cold.dispose()
    approved = await send(shipyard, ApproveGate(run_id=ok.state.run.id, gate="production", actor=CAROL))
    assert approved.accepted and approved.state is not None
    assert approved.state.gates[0].status == "open", "one of two approvals"


@pytest.mark.parametrize("gate", ["{type: automated, run: 'true', timeout: 1m}"])
async def test_an_automated_gate_cannot_stand_in_for_required_approvals(
    sqlite_url: str, start_shipyard: StartShipyard, gate: str
) -> None:
    config = Environments.model_validate({"production": {"approvals": {"from": ["release-managers"]}}})
    shipyard = await start_shipyard(sqlite_url, {"web": one_deploy("web", gate=gate)}, environments=config)
    refused = await send(shipyard, TriggerRun(pipeline="web", actor=ALICE))
    assert not refused.accepted and refused.refusal == "invalid"
    assert "requires approvals" in refused.reason and "move that check to a stage before it" in refused.reason


async def test_queue_positions_and_an_admin_moving_a_run_to_the_front(
    db_url: str, start_shipyard: StartShipyard, tmp_path: Path
) -> None:
    release, ledger = tmp_path / "release", tmp_path / "ledger"
    shipyard = await start_shipyard(db_url, {"web": HOLDING.format(release=release, ledger=ledger)})
    first, second, third, fourth = await _queued(shipyard, 4)
    await wait_for(shipyard, fourth, lambda s: s.run.status is RunStatus.QUEUED)
    queue = await shipyard.orchestrator.db(shipyard.service.queue, "production")
    assert queue.running == (first, "web#1")
    assert [(e.ref, e.position) for e in queue.waiting] == [("web#2", 1), ("web#3", 2), ("web#4", 3)]

    moved = await send(shipyard, MoveToFront(run_id=fourth, actor=ADMIN, reason="hotfix for the outage"))
    assert moved.accepted, moved.reason
    again = await send(shipyard, MoveToFront(run_id=fourth, actor=ADMIN, reason="twice"))
    assert not again.accepted and again.reason == "web#4 is already first in production's queue"
    running = await send(shipyard, MoveToFront(run_id=first, actor=ADMIN, reason="x"))
    assert not running.accepted and "not waiting in a queue" in running.reason
    queue = await shipyard.orchestrator.db(shipyard.service.queue, "production")
    assert [e.ref for e in queue.waiting] == ["web#4", "web#2", "web#3"]
    audit = [
        a for a in shipyard.store.audit_entries(50) if a.action == "move_to_front" and a.outcome == "accepted"
    ]
    assert [(a.actor, a.detail.get("reason")) for a in audit] == [("admin", "hotfix for the outage")]

    release.touch()
    for run_id in (second, third, fourth):
        assert (await wait_for(shipyard, run_id)).run.status is RunStatus.SUCCEEDED
    assert ledger.read_text().split() == ["1", "4", "2", "3"]
