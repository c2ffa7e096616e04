"""``engine.decide`` is pure: what a command needs to know beyond the run is named first
(``engine.needs``), read into a plain ``Known``, and deciding then gets no way to reach storage.

Each case drives a real service on a real database to a moment, reads the run and what it
needs, then decides with every door to the database shut (opening one raises), and checks
that the service, handling the same command a moment later, decides exactly the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, get_args

import pytest
import sqlalchemy as sa

from core import engine
from core.admission import Known
from core.commands import (
    AdmitRun,
    ApproveGate,
    CancelRun,
    CompleteJob,
    ExpireLease,
    RejectGate,
    RetryRun,
    RunCommand,
    TriggerRun,
)
from core.definition import parse_pipeline
from core.engine import Decision
from core.environments import Environments
from core.model import Actor, RunState, evolve, new_run_state
from core.runtime.reading import known
from core.runtime.service import Service
from core.states import JobStatus, RunStatus, StageStatus
from storage.locks import LockStore
from storage.store import SqlStore
from tests.helpers import ALICE, Clock
from tests.pipelines import gated

CAROL = Actor("carol", "cli")

#: build, then production behind a gate, then a check
GATED = gated(approvers="release", then='  - {name: verify, jobs: [{name: smoke, run: "true"}]}\n')

#: build with two jobs, then straight into production
DIRECT = """
name: direct
stages:
  - {name: build, jobs: [{name: compile, run: "true"}, {name: lint, run: "true"}]}
  - name: production
    environment: production
    jobs: [{name: deploy, run: "true", retries: 1}]
"""


class StorageTouched(AssertionError):
    """Deciding reached for the database."""


@contextmanager
def storage_out_of_reach() -> Iterator[list[str]]:
    """Every way into the database raises while this lasts; yields the doors that were tried."""
    tried: list[str] = []

    def shut(name: str) -> Callable[..., Any]:
        def refuse(*_args: Any, **_kwargs: Any) -> Any:
            tried.append(name)
            raise StorageTouched(f"{name} while deciding")

        return refuse

    with pytest.MonkeyPatch.context() as patch:
        for name in ("transaction", "reading"):
            patch.setattr(SqlStore, name, shut(name), raising=True)
        patch.setattr(sa.engine.Engine, "connect", shut("connect"), raising=True)
        yield tried


def service(db_url: str, stores: list[SqlStore], **config: Any) -> Service:
    store = SqlStore(db_url)
    stores.append(store)
    svc = Service(store, clock=Clock(), environments=Environments.model_validate(config))
    for text in (GATED, DIRECT):
        svc.register_pipeline(parse_pipeline(text), text)
    return svc


def decided_offline(svc: Service, command: RunCommand) -> Decision:
    """What ``decide`` makes of ``command`` from what was read beforehand, storage shut."""
    now = svc.clock()
    with svc.store.reading() as tx:
        state = tx.find_run(command.run_id)
        assert state is not None
        needed = known(tx, svc.environments, engine.needs(state, command), state.run.id, now)
    with storage_out_of_reach() as tried:
        with pytest.raises(StorageTouched):
            svc.find_run(state.run.id)  # the doors are shut...
        decision = engine.decide(state, command, now, needed)  # ...and deciding never knocks
    assert tried == ["transaction"]
    return decision


def same_as_service(svc: Service, command: RunCommand) -> Decision:
    offline = decided_offline(svc, command)
    assert svc.handle(command) == offline
    return offline


def started(svc: Service, pipeline: str) -> RunState:
    decision = svc.handle(TriggerRun(pipeline=pipeline, actor=ALICE))
    assert decision.accepted and decision.state is not None, decision.reason
    return decision.state


def run_jobs(svc: Service, run: RunState, outcome: str = "succeeded") -> list[CompleteJob]:
    """Claim every queued job of ``run``; the reports that would finish them."""
    return [
        CompleteJob(
            run_id=a.run_id,
            job_id=a.job_id,
            attempt=a.attempt,
            runner="r1",
            outcome=outcome,  # type: ignore[arg-type]
            exit_code=0 if outcome == "succeeded" else 1,
        )
        for a in svc.claim_jobs("r1", 10, 30)
        if a.run_id == run.run.id
    ]


def built(svc: Service, pipeline: str) -> tuple[RunState, CompleteJob]:
    """A run whose build is done but for its last job's report."""
    run = started(svc, pipeline)
    *first, last = run_jobs(svc, run)
    for report in first:
        assert svc.handle(report).accepted
    return run, last


def status(svc: Service, run: RunState) -> tuple[RunStatus, str]:
    state = svc.find_run(run.run.id)
    assert state is not None
    return state.run.status, state.run.reason


def test_the_last_build_job_takes_the_run_into_a_free_environment(
    db_url: str, stores: list[SqlStore]
) -> None:
    svc = service(db_url, stores)
    _, last = built(svc, "direct")
    decision = same_as_service(svc, last)
    assert decision.state is not None
    assert decision.state.stages[1].status is StageStatus.RUNNING


def test_a_locked_environment_queues_the_run_saying_who_holds_it(db_url: str, stores: list[SqlStore]) -> None:
    svc = service(db_url, stores)
    LockStore(svc.store).acquire("production", "dave", "incident 4711", None, svc.clock())
    run, last = built(svc, "direct")
    same_as_service(svc, last)
    state, reason = status(svc, run)
    assert state is RunStatus.QUEUED and "dave" in reason and "incident 4711" in reason


def test_a_frozen_environment_holds_the_run_or_fails_it(db_url: str, stores: list[SqlStore]) -> None:
    now = Clock().now
    freeze = {"from": (now - timedelta(hours=1)).isoformat(), "to": (now + timedelta(hours=1)).isoformat()}
    svc = service(db_url, stores, production={"freezes": [{**freeze, "reason": "launch"}]})
    run, last = built(svc, "direct")
    same_as_service(svc, last)
    assert status(svc, run)[0] is RunStatus.QUEUED and "launch" in status(svc, run)[1]

    strict = service(db_url, stores, production={"freezes": [freeze], "on_freeze": "fail"})
    run, last = built(strict, "direct")
    same_as_service(strict, last)
    assert status(strict, run)[0] is RunStatus.FAILED


def test_a_run_behind_one_deploying_waits_in_the_queue_and_is_admitted_after_it(
    db_url: str, stores: list[SqlStore]
) -> None:
    svc = service(db_url, stores)
    first, last = built(svc, "direct")
    assert svc.handle(last).accepted  # deploying now
    deployed = run_jobs(svc, first)
    second, last = built(svc, "direct")
    same_as_service(svc, last)
    assert status(svc, second) == (
        RunStatus.QUEUED,
        f"waiting for production: {first.run.ref} is deploying there",
    )
    for report in deployed:
        same_as_service(svc, report)
    assert status(svc, first)[0] is RunStatus.SUCCEEDED
    same_as_service(svc, AdmitRun(run_id=second.run.id))
    assert status(svc, second)[0] is RunStatus.RUNNING


def test_a_gate_is_approved_or_rejected_alike(db_url: str, stores: list[SqlStore]) -> None:
    svc = service(db_url, stores)
    run, last = built(svc, "gated")
    same_as_service(svc, last)  # opens the gate
    assert status(svc, run)[0] is RunStatus.WAITING
    same_as_service(svc, ApproveGate(run_id=run.run.id, gate="production", actor=CAROL))
    assert status(svc, run)[0] is RunStatus.RUNNING
    other, last = built(svc, "gated")
    same_as_service(svc, last)
    same_as_service(svc, RejectGate(run_id=other.run.id, gate="production", actor=CAROL, reason="not today"))
    assert status(svc, other)[0] is RunStatus.FAILED


def test_failures_leases_and_cancels_decide_alike(db_url: str, stores: list[SqlStore]) -> None:
    svc = service(db_url, stores)
    run, last = built(svc, "direct")
    same_as_service(svc, last)
    (failed,) = run_jobs(svc, run, "failed")
    same_as_service(svc, failed)  # retried once
    (job,) = svc.claim_jobs("r1", 10, 30)
    clock = svc.clock
    assert isinstance(clock, Clock)
    clock.advance(60)
    same_as_service(svc, ExpireLease(run_id=job.run_id, job_id=job.job_id, attempt=job.attempt))
    assert status(svc, run)[0] is RunStatus.FAILED
    other = started(svc, "gated")
    same_as_service(svc, CancelRun(run_id=other.run.id, actor=ALICE, reason="wrong branch"))
    refused = same_as_service(svc, CancelRun(run_id=other.run.id, actor=ALICE))
    assert not refused.accepted


def test_a_trigger_and_a_retry_read_the_environment_they_enter_first(
    db_url: str, stores: list[SqlStore]
) -> None:
    svc = service(db_url, stores)
    LockStore(svc.store).acquire("production", "dave", "incident 4711", None, svc.clock())
    run, last = built(svc, "direct")
    assert svc.handle(last).accepted  # built, and queued for production
    assert svc.handle(CancelRun(run_id=run.run.id, actor=ALICE)).accepted
    retry = svc.handle(RetryRun(run_id=run.run.id, actor=ALICE))
    assert retry.accepted and retry.state is not None
    # the build is carried over, so the retry goes straight for production, which is locked
    assert retry.state.run.status is RunStatus.QUEUED and "dave" in retry.state.run.reason


# -- what a command needs to know -------------------------------------------------------


def laid_out(text: str, **statuses: StageStatus) -> RunState:
    """A fresh run of ``text`` with some stages moved by hand (name → status)."""
    definition = parse_pipeline(text)
    fresh = new_run_state(
        run_id="r",
        number=1,
        definition=definition,
        pipeline_version=1,
        version_id="v",
        parameters={},
        source_revision=None,
        actor=ALICE,
        idempotency_key=None,
        retry_of=None,
        now=Clock().now,
    )
    stages = tuple(evolve(s, status=statuses.get(s.name, s.status)) for s in fresh.stages)
    return RunState(fresh.run, stages, fresh.jobs, fresh.gates, fresh.definition)


def test_a_fresh_run_needs_the_environment_of_its_first_stage_only_when_no_gate_comes_first() -> None:
    assert engine.needs_to_start(laid_out(DIRECT)) == frozenset()  # it builds first
    deploy_first = "name: d\nstages: [{name: p, environment: production, jobs: [{name: x, run: 'true'}]}]"
    assert engine.needs_to_start(laid_out(deploy_first)) == {"production"}
    gate_first = (
        "name: g\nstages: [{name: p, environment: production, gate: {approvers: [r]},"
        " jobs: [{name: x, run: 'true'}]}]"
    )
    assert engine.needs_to_start(laid_out(gate_first)) == frozenset()


def test_only_a_report_that_can_finish_a_stage_needs_the_next_environment() -> None:
    state = laid_out(DIRECT, build=StageStatus.RUNNING)
    compile_job, lint_job = state.jobs_of(0)

    def report(job_id: str) -> CompleteJob:
        return CompleteJob(
            run_id="r", job_id=job_id, attempt=1, runner="r1", outcome="succeeded", exit_code=0
        )

    assert engine.needs(state, report(compile_job.id)) == frozenset()  # lint still runs
    done = RunState(
        state.run,
        state.stages,
        (compile_job, evolve(lint_job, status=JobStatus.SUCCEEDED), *state.jobs[2:]),
        state.gates,
        state.definition,
    )
    assert engine.needs(done, report(compile_job.id)) == {"production"}


def test_commands_that_only_stop_or_reorder_need_nothing() -> None:
    state = laid_out(DIRECT, build=StageStatus.SUCCEEDED, production=StageStatus.QUEUED)
    assert engine.needs(state, AdmitRun(run_id="r")) == {"production"}
    assert engine.needs(state, CancelRun(run_id="r", actor=ALICE)) == frozenset()
    assert engine.needs(state, RejectGate(run_id="r", gate="production", actor=CAROL)) == frozenset()


def test_deciding_past_an_environment_that_was_not_read_is_refused_loudly() -> None:
    laid = laid_out(DIRECT, build=StageStatus.SUCCEEDED, production=StageStatus.QUEUED)
    state = RunState(
        evolve(laid.run, status=RunStatus.QUEUED), laid.stages, laid.jobs, laid.gates, laid.definition
    )
    with pytest.raises(LookupError, match="production was not read"):
        engine.decide(state, AdmitRun(run_id="r"), Clock().now, Known())


def test_every_command_on_a_run_has_exactly_one_handler() -> None:
    assert set(engine.HANDLERS) == set(get_args(RunCommand))
