"""The pure engine: ``start``, ``claim`` and ``decide`` driven through whole runs, clock in hand.

Every accepted decision goes through ``ok``, which also checks the engine's contract with the
store: the input state is never mutated, every entity that changed has exactly one ``Change``
conditional on the status (and, for jobs, the attempt) it had before, applying the changes to
the old entities gives the new state, and the events chain each entity's old status to its new.
"""

from __future__ import annotations

import copy
import itertools
import textwrap
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core import engine
from core.commands import (
    ApproveGate,
    CancelRun,
    CompleteJob,
    ExpireLease,
    FailRun,
    InterruptJob,
    JobOutcome,
    PauseRun,
    RecordGateCheck,
    RejectGate,
    ResumeRun,
    RunCommand,
    TimeoutGate,
    TimeoutRun,
)
from core.definition import parse_pipeline
from core.engine import Decision, Outcome
from core.errors import IllegalTransition
from core.model import Actor, Job, RunState, new_run_state

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
RUN = "r1"
ALICE = Actor("alice", "slack")
BOB = Actor("bob", "cli")
CAROL = Actor("carol", "rest")
RUNNER = "runner-1"

THREE = """
name: three
stages:
  - {name: build, jobs: [{name: compile, run: make}, {name: lint, run: make lint}]}
  - {name: test, jobs: [{name: unit, run: make test}]}
  - {name: deploy, jobs: [{name: ship, run: ./ship}]}
"""

WEB = """
name: web
stages:
  - name: build
    jobs:
      - {name: compile, run: make, timeout: 10m}
      - {name: lint, run: make lint, allow_failure: true}
      - {name: docs, run: make docs}
  - name: staging
    jobs: [{name: deploy, run: ./deploy staging, retries: 1}]
  - name: production
    gate: {approvers: [alice, bob, carol], min_approvals: 2, timeout: 4h}
    jobs: [{name: deploy, run: ./deploy production}]
"""

API = """
name: api
stages:
  - {name: build, jobs: [{name: compile, run: make}]}
  - name: production
    gate: {type: automated, run: ./healthy, interval: 5s, timeout: 2m}
    jobs: [{name: deploy, run: ./deploy}]
"""


# -- building and driving runs ----------------------------------------------------------------


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def fresh(text: str, run_id: str = RUN, number: int = 1, retry_of: str | None = None) -> RunState:
    return new_run_state(
        run_id=run_id,
        number=number,
        definition=parse_pipeline(textwrap.dedent(text)),
        pipeline_version=1,
        version_id="v1",
        parameters={"ref": "abc1234"},
        source_revision=None,
        actor=ALICE,
        idempotency_key=None,
        retry_of=retry_of,
        now=T0,
    )


def started(text: str, now: datetime = T0) -> RunState:
    decision = engine.start(fresh(text), now)
    assert decision.accepted and decision.created and decision.changes == ()
    return after(decision)


def after(decision: Decision) -> RunState:
    """The state a decision leads to: what the store would now hold."""
    assert decision.state is not None
    return decision.state


def job(state: RunState, path: str) -> Job:
    """A job by ``stage/job`` name."""
    stage_name, _, job_name = path.partition("/")
    index = [s.name for s in state.stages].index(stage_name)
    return next(j for j in state.jobs_of(index) if j.name == job_name)


def statuses(state: RunState) -> dict[str, str]:
    """Every status by a readable name: ``run``, ``build``, ``build/compile``, ``gate:production``."""
    out = {"run": str(state.run.status)}
    for stage in state.stages:
        out[stage.name] = str(stage.status)
        for j in state.jobs_of(stage.index):
            out[f"{stage.name}/{j.name}"] = str(j.status)
    for gate in state.gates:
        out[f"gate:{gate.stage_name}"] = str(gate.status)
    return out


def assert_statuses(state: RunState, expected: dict[str, str]) -> None:
    actual = statuses(state)
    assert {k: actual[k] for k in expected} == expected


def trail(decision: Decision) -> list[str]:
    """The events of a decision as ``name stage/job``."""
    out = []
    for event in decision.events:
        where = "/".join(str(event.data[k]) for k in ("stage", "job") if k in event.data)
        out.append(f"{event.name} {where}".strip())
    return out


def claim(
    state: RunState, path: str, runner: str = RUNNER, now: datetime = T0, lease_s: float = 60
) -> RunState:
    """A runner claims a queued job, as the store would apply ``engine.claim``'s change."""
    before = job(state, path)
    change = engine.claim(before, runner, now, lease_s)
    assert (change.kind, change.id, change.expect, change.expect_attempt) == (
        "job",
        before.id,
        "queued",
        before.attempt,
    )
    claimed = replace(before, **change.values)
    return replace(state, jobs=tuple(claimed if j.id == before.id else j for j in state.jobs))


def report(
    state: RunState,
    path: str,
    outcome: JobOutcome = "succeeded",
    *,
    exit_code: int | None = None,
    outputs: dict[str, str] | None = None,
    detail: str = "",
    attempt: int | None = None,
    runner: str | None = None,
) -> CompleteJob:
    """A runner's completion report for the job's current attempt (unless told otherwise)."""
    current = job(state, path)
    if exit_code is None and outcome != "timed_out":
        exit_code = 0 if outcome == "succeeded" else 1
    return CompleteJob(
        run_id=state.run.id,
        job_id=current.id,
        attempt=current.attempt if attempt is None else attempt,
        runner=(current.runner or RUNNER) if runner is None else runner,
        outcome=outcome,
        exit_code=exit_code,
        outputs=outputs or {},
        detail=detail,
    )


def ok(state: RunState, command: RunCommand, now: datetime = T0) -> Decision:
    """Decide ``command``; it must be accepted and keep the engine's contract with the store."""
    before = copy.deepcopy(state)
    decision = engine.decide(state, command, now)
    assert state == before, "decide mutated its input state"
    assert decision.outcome is Outcome.ACCEPTED, decision.reason
    assert not decision.created
    assert decision.expect_version == state.run.version
    assert_changes_describe(state, decision)
    return decision


def refused(state: RunState, command: RunCommand, now: datetime = T0) -> str:
    """Decide ``command``; it must be rejected with a reason and change nothing."""
    before = copy.deepcopy(state)
    decision = engine.decide(state, command, now)
    assert state == before, "decide mutated its input state"
    assert decision.outcome is Outcome.REJECTED
    assert decision.changes == () and decision.events == ()
    assert decision.state is state
    assert decision.reason
    return decision.reason


def run_job(
    state: RunState, path: str, outcome: JobOutcome = "succeeded", now: datetime = T0, **kw: Any
) -> Decision:
    """Claim ``path`` and report it ended with ``outcome``."""
    state = claim(state, path, now=now)
    return ok(state, report(state, path, outcome, **kw), now)


def entities(state: RunState) -> dict[tuple[str, str], Any]:
    items: list[Any] = [state.run, *state.stages, *state.jobs, *state.gates]
    return {(type(e).__name__.lower(), e.id): e for e in items}


def assert_changes_describe(old_state: RunState, decision: Decision) -> None:
    old, new = entities(old_state), entities(after(decision))
    assert old.keys() == new.keys()
    changes = {(c.kind, c.id): c for c in decision.changes}
    assert len(changes) == len(decision.changes), "two changes for one entity"
    for key, change in changes.items():
        entity = old[key]
        assert change.expect == entity.status, f"{key}: not conditional on the status it had"
        if key[0] == "job":
            assert change.expect_attempt == entity.attempt, f"{key}: not fenced by its attempt"
        assert replace(entity, **change.values) == new[key], f"{key}: change does not give the new state"
    for key in old.keys() - changes.keys():
        assert new[key] == old[key], f"{key} changed without a Change"
    for key, entity in new.items():
        moves = [e for e in decision.events if e.subject_id == key[1] and e.from_status is not None]
        if not moves:
            assert entity.status == old[key].status, f"{key} changed status without an event"
            continue
        assert moves[0].from_status == old[key].status
        for earlier, later in itertools.pairwise(moves):
            assert later.from_status == earlier.to_status
        assert moves[-1].to_status == entity.status


# -- a whole run ------------------------------------------------------------------------------


def test_start_lays_out_the_run_and_queues_the_first_stage() -> None:
    decision = engine.start(fresh(THREE), T0)
    assert decision.accepted and decision.created
    assert decision.expect_version is None
    assert trail(decision) == [
        "run.created",
        "run.running",
        "stage.running build",
        "job.queued build/compile",
        "job.queued build/lint",
    ]
    state = after(decision)
    assert state.run.started_at == T0
    assert statuses(state) == {
        "run": "running",
        "build": "running",
        "build/compile": "queued",
        "build/lint": "queued",
        "test": "pending",
        "test/unit": "pending",
        "deploy": "pending",
        "deploy/ship": "pending",
    }


def test_three_stage_pipeline_runs_to_succeeded_with_the_right_events() -> None:
    state = started(THREE)
    steps = [
        ("build/compile", ["job.succeeded build/compile"]),
        (
            "build/lint",
            [
                "job.succeeded build/lint",
                "stage.succeeded build",
                "stage.running test",
                "job.queued test/unit",
            ],
        ),
        (
            "test/unit",
            [
                "job.succeeded test/unit",
                "stage.succeeded test",
                "stage.running deploy",
                "job.queued deploy/ship",
            ],
        ),
        ("deploy/ship", ["job.succeeded deploy/ship", "stage.succeeded deploy", "run.succeeded"]),
    ]
    for minute, (path, events) in enumerate(steps, start=1):
        decision = run_job(state, path, now=at(60 * minute))
        assert trail(decision) == events, path
        state = after(decision)
    assert set(statuses(state).values()) == {"succeeded"}
    assert state.run.finished_at == at(240)
    assert (state.run.reason, state.run.warnings) == ("", ())
    assert state.run.is_finished


def test_jobs_of_a_stage_run_in_parallel_and_the_next_stage_waits_for_all_of_them() -> None:
    state = started(THREE)
    state = claim(state, "build/compile")
    state = claim(state, "build/lint", runner="runner-2")  # both claimable at once
    state = after(ok(state, report(state, "build/lint")))
    assert_statuses(state, {"build": "running", "build/compile": "running", "test/unit": "pending"})
    with pytest.raises(IllegalTransition, match="pending → running refused"):
        claim(state, "test/unit")  # a job of a later stage cannot be claimed
    state = after(ok(state, report(state, "build/compile")))
    assert_statuses(state, {"build": "succeeded", "test": "running", "test/unit": "queued"})


def test_claim_fences_the_attempt_and_sets_the_lease() -> None:
    state = started(THREE)
    change = engine.claim(job(state, "build/compile"), "runner-7", at(5), lease_s=30)
    assert change.values["attempt"] == 1
    assert change.values["runner"] == "runner-7"
    assert change.values["lease_expires_at"] == at(35)
    assert change.values["started_at"] == at(5)
    assert change.expect_attempt == 0


# -- partial failure --------------------------------------------------------------------------


@pytest.mark.parametrize("lint_first", [True, False], ids=["lint-fails-first", "lint-fails-last"])
def test_allowed_failure_makes_the_stage_partial_and_the_run_succeed_with_a_warning(lint_first: bool) -> None:
    state = started(WEB)
    order = (
        ["build/lint", "build/compile", "build/docs"]
        if lint_first
        else ["build/compile", "build/docs", "build/lint"]
    )
    for path in order:
        outcome: JobOutcome = "failed" if path == "build/lint" else "succeeded"
        decision = run_job(state, path, outcome, exit_code=3 if outcome == "failed" else 0)
        state = after(decision)
        if path == "build/lint":
            assert decision.jobs_to_stop == ()  # an allowed failure stops nobody
    warning = "stage build: job lint exited with 3 (allowed to fail)"
    assert_statuses(state, {"build": "partial", "build/lint": "failed", "staging": "running"})
    assert state.stages[0].reason == warning
    assert state.run.warnings == (warning,)

    state = after(run_job(state, "staging/deploy"))
    state = after(ok(state, ApproveGate(run_id=RUN, gate="production", actor=CAROL)))
    state = after(ok(state, ApproveGate(run_id=RUN, gate="production", actor=BOB)))
    decision = run_job(state, "production/deploy")
    state = after(decision)
    assert state.run.status == "succeeded"
    assert state.run.warnings == (warning,)
    assert state.run.reason == "succeeded with warnings"
    assert decision.events[-1].data["warnings"] == (warning,)


# -- a required job fails ---------------------------------------------------------------------


def test_required_failure_fails_the_run_stops_siblings_and_skips_the_rest() -> None:
    state = started(WEB)
    state = claim(state, "build/lint", runner="runner-2")  # build/docs stays queued
    decision = run_job(state, "build/compile", "failed", exit_code=2, detail="boom", now=at(30))
    state = after(decision)
    assert decision.jobs_to_stop == ((job(state, "build/lint").id, 1),)  # running: must be killed
    assert statuses(state) == {
        "run": "failed",
        "build": "failed",
        "build/compile": "failed",
        "build/lint": "canceled",
        "build/docs": "canceled",
        "staging": "skipped",
        "staging/deploy": "skipped",
        "production": "skipped",
        "production/deploy": "skipped",
        "gate:production": "skipped",
    }
    reason = "job build/compile exited with 2: boom"
    assert state.run.reason == reason
    assert state.stages[0].reason == reason
    assert job(state, "build/lint").reason == reason
    assert state.run.finished_at == at(30)
    assert "run.failed" == trail(decision)[-1]


def test_a_report_that_arrives_after_the_run_failed_is_rejected() -> None:
    state = started(WEB)
    state = claim(state, "build/lint", runner="runner-2")
    late = report(state, "build/lint")
    state = after(run_job(state, "build/compile", "failed"))
    assert "the job is now canceled" in refused(state, late)


# -- retries ----------------------------------------------------------------------------------


def staging_reached() -> RunState:
    state = started(WEB)
    for path in ("build/compile", "build/lint", "build/docs"):
        state = after(run_job(state, path))
    assert_statuses(state, {"staging": "running", "staging/deploy": "queued"})
    return state


def test_job_with_retries_is_queued_again_then_fails_the_run_on_its_last_failure() -> None:
    state = staging_reached()
    first = run_job(state, "staging/deploy", "failed", exit_code=1, now=at(10))
    state = after(first)
    deploy = job(state, "staging/deploy")
    assert trail(first) == ["job.failed staging/deploy", "job.queued staging/deploy"]
    assert (deploy.status, deploy.failures, deploy.attempt, deploy.runner) == ("queued", 1, 1, None)
    assert deploy.reason == "retry 1 of 1 after: exited with 1"
    assert deploy.queued_at == at(10)
    assert_statuses(state, {"run": "running", "staging": "running"})

    state = claim(state, "staging/deploy", runner="runner-2", now=at(20))
    assert job(state, "staging/deploy").attempt == 2
    second = ok(state, report(state, "staging/deploy", "failed", exit_code=1), at(30))
    state = after(second)
    assert job(state, "staging/deploy").failures == 2
    assert_statuses(state, {"run": "failed", "staging": "failed", "staging/deploy": "failed"})
    assert state.run.reason == "job staging/deploy exited with 1"


def test_a_retried_job_that_then_succeeds_lets_the_run_go_on() -> None:
    state = staging_reached()
    state = after(run_job(state, "staging/deploy", "failed"))
    state = after(run_job(state, "staging/deploy"))
    assert_statuses(state, {"staging": "succeeded", "staging/deploy": "succeeded", "run": "waiting"})


def test_report_for_the_first_attempt_is_rejected_once_the_retry_is_claimed() -> None:
    state = staging_reached()
    state = claim(state, "staging/deploy")
    stale = report(state, "staging/deploy", "failed")
    state = after(ok(state, stale))
    state = claim(state, "staging/deploy", runner="runner-2")
    reason = refused(state, replace(stale, outcome="succeeded", exit_code=0))
    assert reason == "stale report for job deploy attempt 1: the job is now running at attempt 2"


def test_timed_out_outcome_fails_the_job_with_its_timeout_in_the_reason() -> None:
    state = started(WEB)
    decision = run_job(state, "build/compile", "timed_out", now=at(600))
    state = after(decision)
    compile_ = job(state, "build/compile")
    assert (compile_.status, compile_.exit_code, compile_.finished_at) == ("timed_out", None, at(600))
    assert compile_.reason == "timed out after 10m"
    assert state.run.status == "failed"
    assert state.run.reason == "job build/compile timed out after 10m"


# -- fencing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ({"attempt": 0}, "stale report for job compile attempt 0: the job is now running at attempt 1"),
        ({"attempt": 2}, "stale report for job compile attempt 2: the job is now running at attempt 1"),
        ({"runner": "runner-9"}, "job compile attempt 1 is held by runner-1, not runner-9"),
        ({"job_id": "r1.s0.j9"}, "web#1 has no job r1.s0.j9"),
    ],
    ids=["older-attempt", "newer-attempt", "other-runner", "unknown-job"],
)
def test_fenced_report_is_rejected_with_a_reason(tamper: dict[str, Any], reason: str) -> None:
    state = claim(started(WEB), "build/compile")
    assert refused(state, replace(report(state, "build/compile"), **tamper)) == reason


def test_report_for_a_job_that_is_not_running_is_rejected() -> None:
    state = started(WEB)  # queued, never claimed
    command = report(state, "build/compile", attempt=0)
    assert (
        refused(state, command)
        == "stale report for job compile attempt 0: the job is now queued at attempt 0"
    )
    state = after(run_job(state, "build/compile"))  # done: a second report is a duplicate
    again = report(state, "build/compile")
    assert (
        refused(state, again)
        == "stale report for job compile attempt 1: the job is now succeeded at attempt 1"
    )


@pytest.mark.parametrize(
    "command",
    [
        InterruptJob(run_id=RUN, job_id="r1.s0.j0", attempt=1, runner="runner-9"),
        InterruptJob(run_id=RUN, job_id="r1.s0.j0", attempt=0, runner=RUNNER),
        ExpireLease(run_id=RUN, job_id="r1.s0.j0", attempt=0, force=True),
    ],
    ids=["interrupt-other-runner", "interrupt-old-attempt", "expire-old-attempt"],
)
def test_interrupt_and_expire_are_fenced_too(command: RunCommand) -> None:
    state = claim(started(WEB), "build/compile")
    assert refused(state, command, at(3600))


# -- cancel -----------------------------------------------------------------------------------


def test_cancel_kills_running_jobs_and_drops_the_rest() -> None:
    state = claim(started(WEB), "build/compile")
    decision = ok(state, CancelRun(run_id=RUN, actor=ALICE, reason="wrong ref"), at(5))
    state = after(decision)
    assert decision.jobs_to_stop == ((job(state, "build/compile").id, 1),)
    assert statuses(state) == {
        "run": "canceled",
        "build": "canceled",
        "build/compile": "canceled",
        "build/lint": "canceled",
        "build/docs": "canceled",
        "staging": "skipped",
        "staging/deploy": "skipped",
        "production": "skipped",
        "production/deploy": "skipped",
        "gate:production": "skipped",
    }
    assert state.run.reason == "canceled by alice: wrong ref"
    assert job(state, "build/compile").lease_expires_at is None
    assert refused(state, CancelRun(run_id=RUN, actor=BOB)) == "cannot cancel web#1: it already canceled"


def test_cancel_before_the_run_started() -> None:
    decision = ok(fresh(THREE), CancelRun(run_id=RUN, actor=BOB))
    state = after(decision)
    assert decision.jobs_to_stop == ()
    assert trail(decision)[-1] == "run.canceled"
    assert statuses(state) == {
        "run": "canceled",
        "build": "skipped",
        "build/compile": "skipped",
        "build/lint": "skipped",
        "test": "skipped",
        "test/unit": "skipped",
        "deploy": "skipped",
        "deploy/ship": "skipped",
    }
    assert state.run.reason == "canceled by bob"


def test_cancel_while_a_gate_is_open_cancels_the_gate() -> None:
    state = at_production_gate()
    state = after(ok(state, CancelRun(run_id=RUN, actor=ALICE)))
    assert_statuses(state, {"run": "canceled", "production": "canceled", "gate:production": "canceled"})


# -- pause and resume -------------------------------------------------------------------------


def test_pause_puts_queued_jobs_back_and_running_ones_finish() -> None:
    state = claim(started(WEB), "build/compile")
    decision = ok(state, PauseRun(run_id=RUN, actor=BOB))
    state = after(decision)
    assert state.run.reason == "paused by bob"
    assert_statuses(
        state,
        {"run": "paused", "build/compile": "running", "build/lint": "pending", "build/docs": "pending"},
    )
    assert job(state, "build/lint").reason == "run paused"
    assert decision.jobs_to_stop == ()
    with pytest.raises(IllegalTransition):
        claim(state, "build/lint")  # runners cannot pick up a paused run's jobs
    state = after(ok(state, report(state, "build/compile")))
    assert_statuses(state, {"run": "paused", "build": "running", "build/lint": "pending"})

    resumed = ok(state, ResumeRun(run_id=RUN, actor=ALICE))
    state = after(resumed)
    assert trail(resumed) == ["run.running", "job.queued build/lint", "job.queued build/docs"]
    assert state.run.reason == "resumed by alice"
    assert_statuses(state, {"run": "running", "build/lint": "queued", "build/docs": "queued"})


def test_paused_run_starts_nothing_new_when_its_running_stage_finishes() -> None:
    state = started(THREE)
    state = claim(claim(state, "build/compile"), "build/lint")
    state = after(ok(state, PauseRun(run_id=RUN, actor=BOB)))
    state = after(ok(state, report(state, "build/compile")))
    decision = ok(state, report(state, "build/lint"))
    state = after(decision)
    assert trail(decision) == ["job.succeeded build/lint", "stage.succeeded build"]
    assert_statuses(state, {"run": "paused", "build": "succeeded", "test": "pending", "test/unit": "pending"})

    state = after(ok(state, ResumeRun(run_id=RUN, actor=BOB)))
    assert_statuses(state, {"run": "running", "test": "running", "test/unit": "queued"})


def test_paused_run_whose_last_job_finishes_succeeds() -> None:
    state = started("name: one\nstages:\n  - {name: only, jobs: [{name: job, run: x}]}\n")
    state = claim(state, "only/job")
    state = after(ok(state, PauseRun(run_id=RUN, actor=BOB)))
    decision = ok(state, report(state, "only/job"), at(9))
    state = after(decision)
    assert trail(decision) == ["job.succeeded only/job", "stage.succeeded only", "run.succeeded"]
    assert (state.run.status, state.run.finished_at) == ("succeeded", at(9))


def test_a_failure_while_paused_fails_the_run() -> None:
    state = claim(started(THREE), "build/compile")
    state = after(ok(state, PauseRun(run_id=RUN, actor=BOB)))
    state = after(ok(state, report(state, "build/compile", "failed")))
    assert_statuses(state, {"run": "failed", "build": "failed", "build/lint": "canceled", "test": "skipped"})


def test_a_retry_while_paused_waits_for_resume() -> None:
    state = claim(staging_reached(), "staging/deploy")
    state = after(ok(state, PauseRun(run_id=RUN, actor=BOB)))
    decision = ok(state, report(state, "staging/deploy", "failed"))
    state = after(decision)
    assert trail(decision) == [
        "job.failed staging/deploy",
        "job.queued staging/deploy",
        "job.pending staging/deploy",
    ]
    assert_statuses(state, {"run": "paused", "staging/deploy": "pending"})
    state = after(ok(state, ResumeRun(run_id=RUN, actor=BOB)))
    assert_statuses(state, {"run": "running", "staging/deploy": "queued"})


@pytest.mark.parametrize(
    ("prepare", "command", "reason"),
    [
        ("paused", PauseRun(run_id=RUN, actor=BOB), "web#1 is paused; only running or waiting runs pause"),
        ("running", ResumeRun(run_id=RUN, actor=BOB), "web#1 is running, not paused"),
        (
            "canceled",
            PauseRun(run_id=RUN, actor=BOB),
            "web#1 is canceled; only running or waiting runs pause",
        ),
        ("canceled", ResumeRun(run_id=RUN, actor=BOB), "web#1 is canceled, not paused"),
    ],
)
def test_pause_and_resume_are_refused_when_they_make_no_sense(
    prepare: str, command: RunCommand, reason: str
) -> None:
    state = started(WEB)
    if prepare == "paused":
        state = after(ok(state, PauseRun(run_id=RUN, actor=ALICE)))
    elif prepare == "canceled":
        state = after(ok(state, CancelRun(run_id=RUN, actor=ALICE)))
    assert refused(state, command) == reason


# -- manual gates -----------------------------------------------------------------------------


def at_production_gate(now: datetime = T0) -> RunState:
    state = staging_reached()
    decision = run_job(state, "staging/deploy", now=now)
    assert trail(decision)[-4:] == [
        "stage.succeeded staging",
        "gate.open production",
        "stage.waiting production",
        "run.waiting",
    ]
    return after(decision)


def test_reaching_a_gate_opens_it_and_the_run_waits() -> None:
    state = at_production_gate(now=at(100))
    assert_statuses(
        state,
        {
            "run": "waiting",
            "production": "waiting",
            "gate:production": "open",
            "production/deploy": "pending",
        },
    )
    gate = state.gates[0]
    assert (gate.opened_at, gate.deadline, gate.next_check_at) == (at(100), at(100 + 4 * 3600), None)
    assert state.run.reason == "gate production is open"


def test_gate_with_min_approvals_two_needs_two_distinct_approvers() -> None:
    state = at_production_gate()
    first = ok(state, ApproveGate(run_id=RUN, gate="production", actor=CAROL, comment="lgtm"), at(10))
    state = after(first)
    assert trail(first) == ["gate.approval_added production"]
    assert first.events[0].data["approvals"] == 1 and first.events[0].data["needed"] == 2
    assert_statuses(state, {"run": "waiting", "gate:production": "open"})
    assert [(a.actor, a.at, a.comment) for a in state.gates[0].approvals] == [("carol", at(10), "lgtm")]

    again = ApproveGate(run_id=RUN, gate="production", actor=Actor("carol", "cli"))
    assert refused(state, again) == "carol has already approved gate production"

    second = ok(state, ApproveGate(run_id=RUN, gate=state.gates[0].id, actor=BOB), at(20))  # by gate id
    state = after(second)
    assert trail(second) == [
        "gate.approval_added production",
        "gate.approved production",
        "run.running",
        "stage.running production",
        "job.queued production/deploy",
    ]
    gate = state.gates[0]
    assert (gate.decided_by, gate.decided_at, gate.reason) == ("bob", at(20), "approved by carol, bob")
    assert_statuses(state, {"run": "running", "production": "running", "production/deploy": "queued"})


def test_a_gate_that_allows_self_approval_takes_the_triggerers_approval() -> None:
    text = """
name: web
stages:
  - {name: build, jobs: [{name: go, run: x}]}
  - {name: prod, gate: {approvers: [alice], allow_self_approval: true}, jobs: [{name: go, run: x}]}
"""
    state = after(run_job(started(text), "build/go"))
    assert state.gates[0].status == "open", state.gates[0]
    decision = ok(state, ApproveGate(run_id=RUN, gate="prod", actor=ALICE))
    assert after(decision).gates[0].status == "approved"


def test_reject_fails_the_run_naming_the_approver() -> None:
    state = at_production_gate()
    decision = ok(
        state, RejectGate(run_id=RUN, gate="production", actor=BOB, reason="not on a Friday"), at(50)
    )
    state = after(decision)
    gate = state.gates[0]
    assert (gate.status, gate.decided_by, gate.decided_at) == ("rejected", "bob", at(50))
    assert gate.reason == "rejected by bob: not on a Friday"
    assert_statuses(state, {"run": "failed", "production": "failed", "production/deploy": "canceled"})
    assert state.run.reason == "gate production rejected: rejected by bob: not on a Friday"
    assert decision.jobs_to_stop == ()


def test_approving_a_gate_that_is_not_open_yet_is_refused() -> None:
    state = started(WEB)
    reason = refused(state, ApproveGate(run_id=RUN, gate="production", actor=CAROL))
    assert reason == "gate production is not open yet: web#1 has not reached it"
    assert refused(state, RejectGate(run_id=RUN, gate="production", actor=ALICE)) == reason


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        (
            ApproveGate(run_id=RUN, gate="staging", actor=CAROL),
            "web#1 has no gate 'staging' (gates: production)",
        ),
        (TimeoutGate(run_id=RUN, gate="nope"), "web#1 has no gate 'nope' (gates: production)"),
    ],
)
def test_unknown_gate_is_refused_listing_the_gates(command: RunCommand, reason: str) -> None:
    assert refused(at_production_gate(), command) == reason


def test_a_decided_gate_cannot_be_decided_again() -> None:
    state = at_production_gate()
    state = after(ok(state, RejectGate(run_id=RUN, gate="production", actor=BOB)))
    reason = refused(state, ApproveGate(run_id=RUN, gate="production", actor=CAROL))
    assert reason == "gate production is already rejected"


def test_gate_timeout_is_refused_before_the_deadline_and_fails_the_run_after() -> None:
    state = at_production_gate(now=T0)
    deadline = T0 + timedelta(hours=4)
    early = refused(state, TimeoutGate(run_id=RUN, gate="production"), deadline - timedelta(seconds=1))
    assert early == "gate production has not reached its deadline"
    decision = ok(state, TimeoutGate(run_id=RUN, gate="production"), deadline)
    state = after(decision)
    gate = state.gates[0]
    assert (gate.status, gate.decided_by, gate.reason) == (
        "timed_out",
        "timeout",
        "nobody cleared it within 4h",
    )
    assert_statuses(state, {"run": "failed", "production": "failed"})
    assert state.run.reason == "gate production timed out: nobody cleared it within 4h"


def test_a_soak_gate_with_on_timeout_approve_lets_the_stage_go_on_when_nobody_objects() -> None:
    text = WEB.replace("timeout: 4h}", "timeout: 4h, on_timeout: approve}")
    state = started(text)
    for path in ("build/compile", "build/lint", "build/docs", "staging/deploy"):
        state = after(run_job(state, path))
    deadline = state.gates[0].deadline
    assert deadline is not None
    decision = ok(state, TimeoutGate(run_id=RUN, gate="production"), deadline)
    assert trail(decision)[:3] == ["gate.approved production", "run.running", "stage.running production"]
    state = after(decision)
    gate = state.gates[0]
    assert (gate.status, gate.decided_by) == ("approved", "timeout")
    assert gate.reason == "nobody objected within 4h (on_timeout: approve)"
    assert_statuses(state, {"run": "running", "production/deploy": "queued"})


def test_marking_a_run_failed_ends_it_failed_with_who_and_why_and_stops_its_jobs() -> None:
    state = staging_reached()
    decision = ok(state, FailRun(run_id=RUN, actor=ALICE, reason="runner host is gone"))
    state = after(decision)
    assert state.run.status == "failed"
    assert state.run.reason == f"marked failed by {ALICE.name}: runner host is gone"
    assert all(j.status in ("succeeded", "canceled", "skipped") for j in state.jobs)
    again = refused(state, FailRun(run_id=RUN, actor=ALICE))
    assert again == "cannot mark failed web#1: it already failed"


def test_a_gate_without_timeout_never_times_out() -> None:
    text = WEB.replace(", timeout: 4h", "")
    state = started(text)
    for path in ("build/compile", "build/lint", "build/docs", "staging/deploy"):
        state = after(run_job(state, path))
    assert state.gates[0].deadline is None
    reason = refused(state, TimeoutGate(run_id=RUN, gate="production"), at(10**8))
    assert reason == "gate production has not reached its deadline"


def test_resume_while_the_gate_is_still_open_goes_back_to_waiting() -> None:
    state = at_production_gate()
    state = after(ok(state, PauseRun(run_id=RUN, actor=ALICE)))
    decision = ok(state, ResumeRun(run_id=RUN, actor=ALICE))
    assert trail(decision) == ["run.running", "run.waiting"]
    assert_statuses(after(decision), {"run": "waiting", "gate:production": "open"})


def test_a_gate_on_the_first_stage_opens_at_start() -> None:
    text = """
    name: gated
    stages:
      - {name: prod, gate: {approvers: [alice]}, jobs: [{name: go, run: x}]}
    """
    decision = engine.start(fresh(text), T0)
    assert trail(decision) == [
        "run.created",
        "run.running",
        "gate.open prod",
        "stage.waiting prod",
        "run.waiting",
    ]
    state = after(ok(after(decision), ApproveGate(run_id=RUN, gate="prod", actor=CAROL)))
    assert_statuses(state, {"run": "running", "prod": "running", "prod/go": "queued"})


@pytest.mark.parametrize("kind", ["manual", "automated"])
def test_the_longest_gate_timeout_allowed_gives_a_deadline(kind: str) -> None:
    gate = (
        "{approvers: [alice], timeout: 365d}"
        if kind == "manual"
        else "{type: automated, run: x, timeout: 365d}"
    )
    text = f"name: slow\nstages:\n  - {{name: prod, gate: {gate}, jobs: [{{name: go, run: x}}]}}\n"
    state = started(text)
    assert state.gates[0].deadline == T0 + timedelta(days=365)


def test_pause_while_waiting_then_approve_starts_the_stage_only_on_resume() -> None:
    state = at_production_gate()
    state = after(ok(state, PauseRun(run_id=RUN, actor=ALICE)))
    state = after(ok(state, ApproveGate(run_id=RUN, gate="production", actor=CAROL)))
    state = after(ok(state, ApproveGate(run_id=RUN, gate="production", actor=BOB)))
    assert_statuses(state, {"run": "paused", "gate:production": "approved", "production/deploy": "pending"})
    state = after(ok(state, ResumeRun(run_id=RUN, actor=ALICE)))
    assert_statuses(state, {"run": "running", "production": "running", "production/deploy": "queued"})


def test_a_gate_refused_while_the_run_is_paused_fails_the_run_at_once() -> None:
    state = after(ok(at_production_gate(), PauseRun(run_id=RUN, actor=ALICE)))
    state = after(ok(state, RejectGate(run_id=RUN, gate="production", actor=BOB, reason="freeze")))
    assert_statuses(state, {"run": "failed", "gate:production": "rejected", "production": "failed"})
    assert state.run.reason == "gate production rejected: rejected by bob: freeze"


# -- automated gates --------------------------------------------------------------------------


def at_api_gate() -> RunState:
    state = after(run_job(started(API), "build/compile"))
    gate = state.gates[0]
    assert (gate.status, gate.next_check_at, gate.deadline) == ("open", T0, T0 + timedelta(minutes=2))
    assert state.run.status == "waiting"
    return state


def test_failing_check_before_the_deadline_schedules_the_next_one() -> None:
    state = at_api_gate()
    decision = ok(state, RecordGateCheck(run_id=RUN, gate="production", passed=False, detail="503"), at(10))
    state = after(decision)
    assert decision.events == ()
    assert [(c.kind, c.expect, c.values) for c in decision.changes] == [
        ("gate", "open", {"next_check_at": at(15), "reason": "503"})
    ]
    assert_statuses(state, {"run": "waiting", "gate:production": "open"})


def test_passing_check_approves_the_gate_and_starts_the_stage() -> None:
    state = at_api_gate()
    state = after(ok(state, RecordGateCheck(run_id=RUN, gate="production", passed=False), at(10)))
    state = after(
        ok(state, RecordGateCheck(run_id=RUN, gate="production", passed=True, detail="200"), at(15))
    )
    gate = state.gates[0]
    assert (gate.status, gate.decided_by, gate.reason) == ("approved", "check", "200")
    assert_statuses(state, {"run": "running", "production": "running", "production/deploy": "queued"})


def test_failing_check_after_the_deadline_times_the_gate_out() -> None:
    state = at_api_gate()
    state = after(
        ok(state, RecordGateCheck(run_id=RUN, gate="production", passed=False, detail="503"), at(120))
    )
    gate = state.gates[0]
    assert (gate.status, gate.reason) == ("timed_out", "check still failing after 2m: 503")
    assert_statuses(state, {"run": "failed", "production": "failed", "production/deploy": "canceled"})


def test_people_cannot_approve_an_automated_gate() -> None:
    state = at_api_gate()
    reason = refused(state, ApproveGate(run_id=RUN, gate="production", actor=CAROL))
    assert reason == "gate production is automated; it clears itself when its check passes"


def test_a_check_result_for_a_manual_gate_is_refused() -> None:
    state = at_production_gate()
    reason = refused(state, RecordGateCheck(run_id=RUN, gate="production", passed=True))
    assert reason.startswith("gate production is manual")
    assert state.gates[0].status == "open"


# -- leases -----------------------------------------------------------------------------------


def test_expire_lease_is_refused_while_the_lease_is_valid() -> None:
    state = claim(started(THREE), "build/compile", now=T0, lease_s=60)
    command = ExpireLease(run_id=RUN, job_id=job(state, "build/compile").id, attempt=1)
    assert refused(state, command, at(59)) == "job compile's lease is still valid"


def test_expired_lease_loses_the_job_and_fails_the_run_without_retries() -> None:
    state = claim(started(THREE), "build/compile", now=T0, lease_s=60)
    command = ExpireLease(run_id=RUN, job_id=job(state, "build/compile").id, attempt=1)
    decision = ok(state, command, at(60))
    state = after(decision)
    compile_ = job(state, "build/compile")
    assert (compile_.status, compile_.failures) == ("lost", 1)
    assert compile_.reason == "lost: runner runner-1 stopped renewing its lease"
    assert state.run.status == "failed"
    assert state.run.reason == "job build/compile lost: runner runner-1 stopped renewing its lease"
    (change,) = [c for c in decision.changes if c.id == compile_.id]
    assert change.guard == {"lease_expires_at": at(60)}  # only if nobody renewed it meanwhile


def test_expired_lease_retries_a_job_with_retries_left() -> None:
    state = claim(staging_reached(), "staging/deploy", now=T0, lease_s=60)
    command = ExpireLease(run_id=RUN, job_id=job(state, "staging/deploy").id, attempt=1)
    state = after(ok(state, command, at(120)))
    deploy = job(state, "staging/deploy")
    assert (deploy.status, deploy.failures, deploy.runner, deploy.lease_expires_at) == (
        "queued",
        1,
        None,
        None,
    )
    assert deploy.reason == "retry 1 of 1 after: lost: runner runner-1 stopped renewing its lease"
    assert claim(state, "staging/deploy").jobs != state.jobs  # claimable again


def test_forced_expiry_skips_the_lease_check() -> None:
    state = claim(started(THREE), "build/compile", now=T0, lease_s=60)
    command = ExpireLease(run_id=RUN, job_id=job(state, "build/compile").id, attempt=1, force=True)
    state = after(ok(state, command, at(1)))
    assert job(state, "build/compile").reason == "lost: runner runner-1 its server restarted"
    assert state.run.status == "failed"


def test_interrupted_job_is_queued_again_without_counting_a_failure() -> None:
    state = claim(started(THREE), "build/compile")
    command = InterruptJob(run_id=RUN, job_id=job(state, "build/compile").id, attempt=1, runner=RUNNER)
    decision = ok(state, command, at(7))
    state = after(decision)
    compile_ = job(state, "build/compile")
    assert (compile_.status, compile_.failures, compile_.runner, compile_.queued_at) == (
        "queued",
        0,
        None,
        at(7),
    )
    assert compile_.reason == "interrupted: runner runner-1 shut down"
    assert state.run.status == "running"
    assert decision.jobs_to_stop == ()
    assert job(claim(state, "build/compile"), "build/compile").attempt == 2


def test_interrupted_job_of_a_paused_run_goes_back_to_pending() -> None:
    state = claim(started(THREE), "build/compile")
    state = after(ok(state, PauseRun(run_id=RUN, actor=BOB)))
    command = InterruptJob(run_id=RUN, job_id=job(state, "build/compile").id, attempt=1, runner=RUNNER)
    state = after(ok(state, command))
    assert_statuses(state, {"run": "paused", "build/compile": "pending", "build/lint": "pending"})


# -- retrying a failed run --------------------------------------------------------------------


def failed_at_test_stage() -> RunState:
    state = started(THREE)
    state = after(run_job(state, "build/compile", outputs={"image": "web:abc1234"}))
    state = after(run_job(state, "build/lint", outputs={"warnings": "0"}))
    state = after(run_job(state, "test/unit", "failed"))
    assert_statuses(state, {"run": "failed", "build": "succeeded", "test": "failed", "deploy": "skipped"})
    return state


def test_retry_reuses_the_stages_that_succeeded_and_runs_the_failed_one_again() -> None:
    old = failed_at_test_stage()
    decision = engine.start(fresh(THREE, run_id="r2", number=2, retry_of=RUN), at(900), reuse=old)
    assert decision.accepted and decision.created
    state = after(decision)
    assert statuses(state) == {
        "run": "running",
        "build": "skipped",
        "build/compile": "skipped",
        "build/lint": "skipped",
        "test": "running",
        "test/unit": "queued",
        "deploy": "pending",
        "deploy/ship": "pending",
    }
    assert job(state, "build/compile").outputs == {"image": "web:abc1234"}
    assert job(state, "build/lint").outputs == {"warnings": "0"}
    assert state.stages[0].reason == "reused from three#1"
    reused = [(s.name, s.reused_from) for s in state.stages]
    assert reused == [("build", RUN), ("test", None), ("deploy", None)]
    assert [(j.name, j.reused_from) for j in state.jobs] == [
        ("compile", RUN),
        ("lint", RUN),
        ("unit", None),
        ("ship", None),
    ]
    assert state.run.retry_of == RUN
    assert decision.events[0].data["retry_of"] == RUN
    assert all(j.run_id == "r2" for j in state.jobs)
    assert old == failed_at_test_stage()  # the old run is untouched

    state = after(run_job(state, "test/unit"))
    state = after(run_job(state, "deploy/ship"))
    assert state.run.status == "succeeded"


def test_retry_of_a_run_that_failed_in_its_first_stage_runs_everything_again() -> None:
    old = after(run_job(started(THREE), "build/compile", "failed"))
    state = after(engine.start(fresh(THREE, run_id="r2", retry_of=RUN), at(900), reuse=old))
    assert_statuses(state, {"build": "running", "build/compile": "queued", "build/lint": "queued"})


def test_retry_reuses_a_partial_stage_and_a_passed_gate() -> None:
    old = started(WEB)
    old = after(run_job(old, "build/compile"))
    old = after(run_job(old, "build/lint", "failed"))
    old = after(run_job(old, "build/docs"))
    old = after(run_job(old, "staging/deploy"))
    old = after(ok(old, ApproveGate(run_id=RUN, gate="production", actor=CAROL)))
    old = after(ok(old, ApproveGate(run_id=RUN, gate="production", actor=BOB)))
    old = after(run_job(old, "production/deploy", "failed"))
    assert_statuses(
        old, {"run": "failed", "build": "partial", "staging": "succeeded", "production": "failed"}
    )

    web = textwrap.dedent(WEB)
    state = after(engine.start(fresh(web, run_id="r2", retry_of=RUN), at(900), reuse=old))
    assert_statuses(
        state,
        {
            "build": "skipped",
            "staging": "skipped",
            "production": "waiting",
            "gate:production": "open",  # the gate is asked again for the stage that failed
            "run": "waiting",
        },
    )
    # the warning of the reused partial stage is not lost with the retry
    assert state.run.warnings == ("reused from web#1: stage build: job lint exited with 1 (allowed to fail)",)


# -- the contract with the store --------------------------------------------------------------


def test_every_change_is_conditional_on_the_status_read() -> None:
    state = claim(started(WEB), "build/compile")
    decision = ok(state, CancelRun(run_id=RUN, actor=ALICE))
    expected = {
        ("run", "r1", "running"),
        ("stage", "r1.s0", "running"),
        ("stage", "r1.s1", "pending"),
        ("stage", "r1.s2", "pending"),
        ("job", "r1.s0.j0", "running"),
        ("job", "r1.s0.j1", "queued"),
        ("job", "r1.s0.j2", "queued"),
        ("job", "r1.s1.j0", "pending"),
        ("job", "r1.s2.j0", "pending"),
        ("gate", "r1.g2", "pending"),
    }
    assert {(c.kind, c.id, c.expect) for c in decision.changes} == expected
    by_id = {c.id: c for c in decision.changes}
    assert by_id["r1.s0.j0"].expect_attempt == 1
    assert by_id["r1.s0.j1"].expect_attempt == 0


def test_a_job_moved_twice_in_one_decision_is_one_change_expecting_its_first_status() -> None:
    state = claim(staging_reached(), "staging/deploy")
    decision = ok(state, report(state, "staging/deploy", "failed"))
    (change,) = [c for c in decision.changes if c.kind == "job"]
    assert (change.expect, change.values["status"]) == ("running", "queued")


def test_decide_never_mutates_the_state_it_is_given() -> None:
    state = claim(started(WEB), "build/compile")
    snapshot = copy.deepcopy(state)
    for command in [
        report(state, "build/compile", outputs={"image": "x"}),
        report(state, "build/compile", "failed"),
        CancelRun(run_id=RUN, actor=ALICE),
        PauseRun(run_id=RUN, actor=ALICE),
        ExpireLease(run_id=RUN, job_id="r1.s0.j0", attempt=1, force=True),
    ]:
        engine.decide(state, command, at(1))
        assert state == snapshot


def test_a_run_past_its_own_timeout_fails_and_its_running_jobs_are_stopped() -> None:
    text = """
name: web
timeout: 10m
stages:
  - {name: build, jobs: [{name: go, run: x}]}
  - {name: ship, jobs: [{name: go, run: x}]}
"""
    state = started(text)
    assert state.run.deadline == T0 + timedelta(minutes=10)
    state = claim(state, "build/go")
    early = engine.decide(state, TimeoutRun(run_id=RUN), T0 + timedelta(minutes=9))
    assert not early.accepted and "has not reached its deadline" in early.reason
    late = ok(state, TimeoutRun(run_id=RUN), T0 + timedelta(minutes=11))
    after_state = after(late)
    assert after_state.run.status == "failed"
    assert after_state.run.reason == "timed out: the run took longer than its timeout of 10m"
    assert [j for j, _ in late.jobs_to_stop] == [after_state.jobs[0].id]
    assert [s.status for s in after_state.stages] == ["canceled", "skipped"]
