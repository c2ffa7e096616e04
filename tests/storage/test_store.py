"""The store on real SQLite and PostgreSQL: conditional writes, claims, the event log, audit,
pipeline versions, logs."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from core import engine
from core.commands import (
    ApproveGate,
    CancelRun,
    Command,
    CompleteJob,
    ExpireLease,
    PauseRun,
    RecordGateCheck,
    RetryRun,
    TriggerRun,
)
from core.definition import parse_pipeline
from core.engine import Decision
from core.errors import Conflict
from core.runtime.service import Service
from core.states import JobStatus, RunStatus
from storage.store import SqlStore, SqlTx
from storage.tables import metadata
from tests.helpers import ALICE, BOB, Clock, pipeline
from tests.pipelines import THREE_BY_TWO, gated, one_job

MakeService = Callable[..., Service]

GATED = gated(stage="prod", approvers="release", environment=None)


def group_commit(svc: Service, commands: Sequence[Command]) -> list[Decision | Exception]:
    """Commands applied in one transaction, as the orchestrator's group commit does."""
    return svc.commit(commands, ())[0]


def test_migrations_create_exactly_the_declared_schema(db_url: str, make_service: MakeService) -> None:
    db = sa.create_engine(db_url)
    with db.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    db.dispose()
    assert diff == []


def test_two_writers_on_the_same_run_version_conflict(db_url: str, make_service: MakeService) -> None:
    first = make_service(db_url, THREE_BY_TWO)
    second = make_service(db_url)
    run = first.handle(TriggerRun(pipeline="three", actor=ALICE)).state
    assert run is not None
    with first.store.transaction() as tx1:
        state1 = tx1.load_run(run.run.id)
        assert state1 is not None
        decision = engine.decide(state1, CancelRun(run_id=run.run.id, actor=ALICE), first.clock())
        tx1.apply(decision.state, decision.expect_version, decision.changes)  # type: ignore[arg-type]
    # the second writer decided on the version it read before the first committed
    with pytest.raises(Conflict), second.store.transaction() as tx2:
        stale = engine.decide(state1, CancelRun(run_id=run.run.id, actor=BOB), second.clock())
        tx2.apply(stale.state, stale.expect_version, stale.changes)  # type: ignore[arg-type]
    assert first.find_run(run.run.id).run.status is RunStatus.CANCELED  # type: ignore[union-attr]


def test_a_second_process_sees_changes_made_by_the_first(db_url: str, make_service: MakeService) -> None:
    """Each process caches decoded runs; the version check must catch another process's writes."""
    one = make_service(db_url, THREE_BY_TWO)
    two = make_service(db_url)
    run_id = one.handle(TriggerRun(pipeline="three", actor=ALICE)).state.run.id  # type: ignore[union-attr]
    assert two.find_run(run_id).run.status is RunStatus.RUNNING  # type: ignore[union-attr]
    assert one.handle(CancelRun(run_id=run_id, actor=ALICE)).accepted
    assert two.find_run(run_id).run.status is RunStatus.CANCELED  # type: ignore[union-attr]
    refused = two.handle(CancelRun(run_id=run_id, actor=BOB))
    assert not refused.accepted and "already canceled" in refused.reason


def test_each_queued_job_is_claimed_once_by_competing_claimers(
    db_url: str, make_service: MakeService
) -> None:
    svc = make_service(db_url, THREE_BY_TWO)
    for _ in range(10):
        svc.handle(TriggerRun(pipeline="three", actor=ALICE))
    services = [make_service(db_url) for _ in range(4)]
    claimed: list[str] = []
    lock = threading.Lock()

    def claim(s: Service, name: str) -> None:
        while batch := s.claim_jobs(name, 3, 30):
            with lock:
                claimed.extend(a.job_id for a in batch)

    threads = [threading.Thread(target=claim, args=(s, f"r{i}")) for i, s in enumerate(services)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(claimed) == 20  # the first stage of 10 runs, two jobs each
    assert len(set(claimed)) == 20


@pytest.mark.postgres
def test_skip_locked_hands_a_job_to_only_one_of_two_open_claims(
    pg_url: str, make_service: MakeService
) -> None:
    svc = make_service(pg_url, one_job("one"))
    svc.handle(TriggerRun(pipeline="one", actor=ALICE))
    other = make_service(pg_url).store
    with svc.store.transaction() as tx1:
        first = tx1.claimable_jobs(5)
        with other.transaction() as tx2:
            assert tx2.claimable_jobs(5) == []  # locked by the open claim, skipped, not waited on
    assert len(first) == 1


def test_runner_reports_are_fenced_by_attempt(db_url: str, make_service: MakeService) -> None:
    svc = make_service(db_url, one_job("one", retries=1))
    svc.handle(TriggerRun(pipeline="one", actor=ALICE))
    (job,) = svc.claim_jobs("r1", 5, 30)
    assert svc.store.append_log(job.job_id, job.attempt, "r1", [("stdout", "hello\n")])
    assert not svc.store.append_log(job.job_id, job.attempt + 1, "r1", [("stdout", "forged\n")])
    assert not svc.store.append_log(job.job_id, job.attempt, "r2", [("stdout", "forged\n")])
    stale = svc.handle(
        CompleteJob(
            run_id=job.run_id,
            job_id=job.job_id,
            attempt=job.attempt + 1,
            runner="r1",
            outcome="succeeded",
            exit_code=0,
        )
    )
    assert not stale.accepted and "stale report" in stale.reason
    ok = svc.handle(
        CompleteJob(
            run_id=job.run_id,
            job_id=job.job_id,
            attempt=job.attempt,
            runner="r1",
            outcome="succeeded",
            exit_code=0,
        )
    )
    assert ok.accepted and ok.state.run.status is RunStatus.SUCCEEDED  # type: ignore[union-attr]
    assert svc.store.tail_log(job.job_id) == ["hello"]
    refused = [e for e in svc.store.audit_entries() if e.outcome == "rejected"]
    assert refused and refused[0].action == "complete_job"


def test_event_log_is_ordered_and_readable_by_cursor(db_url: str, make_service: MakeService) -> None:
    svc = make_service(db_url, THREE_BY_TWO)
    for _ in range(3):
        svc.handle(TriggerRun(pipeline="three", actor=ALICE))
    events = svc.store.events_after(0, 1000)
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    middle = seqs[len(seqs) // 2]
    assert [e.seq for e in svc.store.events_after(middle, 1000)] == [s for s in seqs if s > middle]
    assert svc.store.last_event_seq() == seqs[-1]
    first = events[0]
    assert first.name == "run.created" and first.data["pipeline"] == "three"


def test_every_command_is_audited_accepted_or_refused(db_url: str, make_service: MakeService) -> None:
    svc = make_service(db_url, GATED)
    run = svc.handle(TriggerRun(pipeline="gated", actor=ALICE, parameters={})).state
    assert run is not None
    svc.handle(ApproveGate(run_id=run.run.id, gate="prod", actor=BOB))  # not open yet: refused
    svc.handle(TriggerRun(pipeline="nope", actor=ALICE))
    entries = svc.store.audit_entries()
    assert [(e.action, e.outcome, e.actor, e.channel) for e in entries[:3]] == [
        ("trigger_run", "rejected", "alice", "cli"),
        ("approve_gate", "rejected", "bob", "slack"),
        ("trigger_run", "accepted", "alice", "cli"),
    ]
    assert "not open yet" in entries[1].reason
    assert "unknown pipeline 'nope'" in entries[0].reason


def test_a_run_keeps_the_pipeline_version_it_started_from(db_url: str, make_service: MakeService) -> None:
    svc = make_service(db_url, GATED)
    old = svc.handle(TriggerRun(pipeline="gated", actor=ALICE)).state
    assert old is not None
    edited = GATED.replace("compile", "build-it")
    version, created = svc.register_pipeline(pipeline(edited), edited)
    assert created and version.version == 2
    again, created_again = svc.register_pipeline(pipeline(edited), edited)
    assert not created_again and again.id == version.id
    assert svc.find_run(old.run.id).definition.stages[0].jobs[0].name == "compile"  # type: ignore[union-attr]
    new = svc.handle(TriggerRun(pipeline="gated", actor=ALICE)).state
    assert new is not None and new.run.pipeline_version == 2 and new.jobs[0].name == "build-it"


def test_idempotency_key_returns_the_first_run(db_url: str, make_service: MakeService) -> None:
    svc = make_service(db_url, GATED)
    first = svc.handle(TriggerRun(pipeline="gated", actor=ALICE, idempotency_key="deploy-42"))
    second = svc.handle(TriggerRun(pipeline="gated", actor=ALICE, idempotency_key="deploy-42"))
    assert second.duplicate and second.state.run.id == first.state.run.id  # type: ignore[union-attr]
    assert len(svc.store.list_runs("gated")) == 1


def test_runs_are_found_by_id_prefix_and_by_number(db_url: str, make_service: MakeService) -> None:
    svc = make_service(db_url, GATED)
    run = svc.handle(TriggerRun(pipeline="gated", actor=ALICE)).state
    assert run is not None
    assert svc.find_run("gated#1").run.id == run.run.id  # type: ignore[union-attr]
    assert svc.find_run(run.run.id[:8]).run.id == run.run.id  # type: ignore[union-attr]
    assert svc.find_run(run.run.id[:6].upper()).run.id == run.run.id  # type: ignore[union-attr]
    assert svc.find_run("gated#2") is None
    assert svc.find_run(run.run.id[:7] + "g") is None  # not hex: no run's id starts so


def test_expired_leases_are_found_and_expire_only_once(db_url: str, make_service: MakeService) -> None:
    clock = Clock()
    svc = make_service(db_url, one_job("one"), clock=clock)
    svc.handle(TriggerRun(pipeline="one", actor=ALICE))
    (job,) = svc.claim_jobs("r1", 1, 30)
    assert svc.due(60).expired == []
    clock.advance(31)
    assert svc.due(60).expired == [(job.run_id, job.job_id, job.attempt)]
    expire = ExpireLease(run_id=job.run_id, job_id=job.job_id, attempt=job.attempt)
    assert svc.handle(expire).accepted
    assert not svc.handle(expire).accepted
    state = svc.find_run(job.run_id)
    assert state is not None and state.jobs[0].status is JobStatus.LOST
    assert state.run.status is RunStatus.FAILED


def test_a_group_commit_keeps_the_cached_run_equal_to_the_stored_one(
    db_url: str, make_service: MakeService
) -> None:
    """Two commands on one run in one transaction: the version written must be the one cached,
    or every later command would pay for a full reload."""
    svc = make_service(db_url, THREE_BY_TWO)
    run = svc.handle(TriggerRun(pipeline="three", actor=ALICE)).state
    assert run is not None
    jobs = svc.claim_jobs("r1", 2, 30)
    decisions = group_commit(
        svc,
        [
            CompleteJob(
                run_id=j.run_id,
                job_id=j.job_id,
                attempt=j.attempt,
                runner="r1",
                outcome="succeeded",
                exit_code=0,
            )
            for j in jobs
        ],
    )
    assert all(d.accepted for d in decisions)
    cached = svc.store._runs[run.run.id]  # type: ignore[attr-defined]
    fresh = make_service(db_url).find_run(run.run.id)
    assert fresh is not None
    assert cached.run.version == fresh.run.version
    assert cached.stages[1].status == fresh.stages[1].status == "running"


@pytest.mark.parametrize("ref", ["one#99999999999999999999", "one#\u00b2", "one#", "#", "zz\u00e9zzzz", ""])
def test_an_odd_run_reference_is_simply_not_found(db_url: str, make_service: MakeService, ref: str) -> None:
    svc = make_service(db_url, one_job("one"))
    decision = svc.handle(CancelRun(run_id=ref, actor=ALICE))
    assert not decision.accepted and decision.reason.startswith("no run")


def test_one_failing_command_does_not_sink_the_others_in_its_group_commit(
    db_url: str, make_service: MakeService, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = make_service(db_url, one_job("one"))
    run = svc.handle(TriggerRun(pipeline="one", actor=ALICE)).state
    assert run is not None
    original = SqlTx.find_run
    broken: list[str] = []

    def broken_for_one_ref(self: SqlTx, ref: str) -> object:
        if ref == "boom":
            broken.append(ref)
            raise RuntimeError("the database said something unexpected")
        return original(self, ref)

    monkeypatch.setattr(SqlTx, "find_run", broken_for_one_ref, raising=True)
    outcomes = group_commit(
        svc, [PauseRun(run_id=run.run.id, actor=BOB), CancelRun(run_id="boom", actor=ALICE)]
    )
    assert isinstance(outcomes[0], Decision) and outcomes[0].accepted
    assert isinstance(outcomes[1], RuntimeError)
    assert broken == ["boom", "boom"]  # the fault happened: in the group, then applied alone


def test_concurrent_triggers_with_one_idempotency_key_start_one_run(
    db_url: str, make_service: MakeService
) -> None:
    services = [make_service(db_url, one_job("one"))] + [make_service(db_url) for _ in range(3)]
    command = TriggerRun(pipeline="one", actor=ALICE, idempotency_key="deploy-123")
    with ThreadPoolExecutor(len(services)) as pool:
        decisions = list(pool.map(lambda s: s.handle(command), services))
    assert all(d.accepted for d in decisions)
    assert len({d.state.run.id for d in decisions if d.state}) == 1
    assert sum(not d.duplicate for d in decisions) == 1


def test_an_automated_gate_is_checked_once_at_a_time_even_past_its_deadline(
    db_url: str, make_service: MakeService
) -> None:
    clock = Clock()
    svc = make_service(
        db_url,
        """
        name: checked
        stages:
          - name: prod
            gate: {type: automated, run: "./smoke-test", interval: 30s, timeout: 60s}
            jobs: [{name: deploy, run: "true"}]
    """,
        clock=clock,
    )
    run = svc.handle(TriggerRun(pipeline="checked", actor=ALICE)).state
    assert run is not None
    assert len(svc.due(60).gate_checks) == 1  # the first check starts at once
    assert svc.due(60).gate_checks == []  # and only once
    clock.advance(61)  # past the deadline, the first check still running
    assert [len(svc.due(60).gate_checks) for _ in range(3)] == [0, 0, 0]
    clock.advance(30)  # its claim has run out (the checker died): one new check
    assert [len(svc.due(60).gate_checks) for _ in range(3)] == [1, 0, 0]
    failed = svc.handle(RecordGateCheck(run_id=run.run.id, gate="prod", passed=False, detail="503"))
    assert failed.state is not None and failed.state.run.status is RunStatus.FAILED
    assert "check still failing after 1m" in failed.state.run.reason


def test_a_retry_of_a_retry_still_starts_from_the_stage_that_failed(
    db_url: str, make_service: MakeService
) -> None:
    svc = make_service(
        db_url,
        """
        name: web
        stages:
          - {name: build, jobs: [{name: compile, run: "echo image=a1 >> $SHIPYARD_OUTPUT"}]}
          - {name: staging, jobs: [{name: deploy, run: "true"}]}
          - {name: production, jobs: [{name: deploy, run: "true"}]}
    """,
    )

    def run_everything(fail: str) -> None:
        while jobs := svc.claim_jobs("r1", 10, 30):
            for a in jobs:
                ok = a.stage != fail
                svc.handle(
                    CompleteJob(
                        run_id=a.run_id,
                        job_id=a.job_id,
                        attempt=a.attempt,
                        runner="r1",
                        outcome="succeeded" if ok else "failed",
                        exit_code=0 if ok else 1,
                        outputs={"image": "a1"} if a.stage == "build" else {},
                    )
                )

    first = svc.handle(TriggerRun(pipeline="web", actor=ALICE)).state
    assert first is not None
    run_everything(fail="production")
    second = svc.handle(RetryRun(run_id=first.run.id, actor=ALICE)).state
    assert second is not None
    run_everything(fail="production")
    third = svc.handle(RetryRun(run_id=second.run.id, actor=ALICE)).state
    assert third is not None
    assert [(s.name, str(s.status)) for s in third.stages] == [
        ("build", "skipped"),
        ("staging", "skipped"),
        ("production", "running"),
    ]
    assert third.stages[0].reason == "reused from web#1"
    assert third.jobs[0].outputs == {"image": "a1"}
    fresh = SqlStore(db_url)  # no cached copy: what the columns hold
    try:
        with fresh.transaction() as tx:
            stored = tx.load_run(third.run.id)
    finally:
        fresh.dispose()
    assert stored is not None
    # the run that did the work, not the retry in between
    assert [s.reused_from for s in stored.stages] == [first.run.id, first.run.id, None]
    assert [j.reused_from for j in stored.jobs] == [first.run.id, first.run.id, None]


def test_a_batch_of_triggers_numbers_each_pipeline_on_and_honours_every_idempotency_key(
    db_url: str, make_service: MakeService
) -> None:
    """A group commit of triggers reads numbers, versions and keys ahead in a few statements;
    it must still answer exactly as one trigger at a time would."""
    svc = make_service(db_url, one_job("one"), one_job("two"))
    before = svc.handle(TriggerRun(pipeline="one", actor=ALICE, idempotency_key="old"))
    assert before.state is not None and before.state.run.number == 1
    svc.set_archived("two", True)
    svc.register_pipeline(parse_pipeline(one_job("one", stage="t")), one_job("one"))  # one's version 2
    batch = [
        TriggerRun(pipeline="one", actor=ALICE, idempotency_key="k1"),
        TriggerRun(pipeline="one", actor=ALICE, idempotency_key="old"),  # made before the batch
        TriggerRun(pipeline="two", actor=ALICE),  # archived
        TriggerRun(pipeline="one", actor=ALICE, idempotency_key="k1"),  # made earlier in the batch
        TriggerRun(pipeline="nope", actor=ALICE),
        TriggerRun(pipeline="one", actor=ALICE),
    ]
    d = group_commit(svc, batch)
    assert all(isinstance(x, Decision) for x in d)
    first, old, archived, again, unknown, plain = d  # type: ignore[misc]
    assert first.accepted and not first.duplicate and first.state.run.number == 2
    assert first.state.run.pipeline_version == 2
    assert old.duplicate and old.state.run.id == before.state.run.id
    assert not archived.accepted and "archived" in archived.reason
    assert again.duplicate and again.state.run.id == first.state.run.id
    assert not unknown.accepted and unknown.refusal == "not_found"
    assert plain.accepted and plain.state.run.number == 3
    fresh = make_service(db_url)
    assert [fresh.find_run(f"one#{n}") is not None for n in (1, 2, 3, 4)] == [True, True, True, False]
    after = svc.handle(TriggerRun(pipeline="one", actor=ALICE))
    assert after.state is not None and after.state.run.number == 4


def test_concurrent_batches_of_triggers_never_share_a_run_number_or_a_key(
    db_url: str, make_service: MakeService
) -> None:
    first = make_service(db_url, one_job("one"), one_job("two"))
    services = [first] + [make_service(db_url) for _ in range(3)]

    def batch(svc: Service) -> list[Decision | Exception]:
        return group_commit(
            svc,
            [
                TriggerRun(pipeline=p, actor=ALICE, idempotency_key=f"{p}-{i % 10}")
                for i in range(20)
                for p in ("one", "two")
            ],
        )

    with ThreadPoolExecutor(len(services)) as pool:
        outcomes = [x for xs in pool.map(batch, services) for x in xs]
    decided = [x for x in outcomes if isinstance(x, Decision)]
    assert len(decided) == len(outcomes) and all(x.accepted for x in decided)
    made = {x.state.run.id: x.state.run for x in decided if x.state and not x.duplicate}
    assert len(made) == 20  # ten keys per pipeline
    for p in ("one", "two"):
        numbers = sorted(r.number for r in made.values() if r.pipeline == p)
        assert numbers == list(range(1, 11))


def test_many_rows_written_at_once_read_back_exactly(db_url: str, make_service: MakeService) -> None:
    """A batch big enough to go by COPY on PostgreSQL: values with tabs, newlines,
    backslashes, quotes, NUL-free control characters and non-ASCII text come back unchanged."""
    svc = make_service(db_url, one_job("odd", head="parameters: [{name: note}]"))
    notes = [f'n{i}\t"q"\\N\\\\ \r\n {{"x": [1]}} \u00e9\u4e2d\U0001f680 \x07' for i in range(40)]
    decided = group_commit(
        svc, [TriggerRun(pipeline="odd", actor=ALICE, parameters={"note": n}) for n in notes]
    )
    assert all(isinstance(d, Decision) and d.accepted for d in decided)
    fresh = make_service(db_url)
    for number, note in enumerate(notes, start=1):
        run = fresh.find_run(f"odd#{number}")
        assert run is not None and run.run.parameters == {"note": note}
        assert run.run.triggered_by == ALICE.name
    events = fresh.store.events_after(0, limit=1000)
    assert sum(e.name == "run.running" for e in events) == len(notes)
