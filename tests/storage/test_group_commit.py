"""One group commit on real SQLite and PostgreSQL. Its writes go to the database in as few round
trips as it can (on PostgreSQL one pipeline for the decided changes with the next read, one for
the claims with the next claim's read): no job is handed out twice, a claim sees the jobs the
reports before it in the batch queued, and every claim is on disk once the batch has committed."""

from __future__ import annotations

from collections.abc import Callable

from core.commands import CompleteJob, TriggerRun
from core.runtime.claims import ClaimJobs
from core.runtime.service import Service
from core.states import JobStatus
from tests.helpers import ALICE
from tests.pipelines import THREE_BY_TWO

MakeService = Callable[..., Service]


def _started(svc: Service) -> str:
    state = svc.handle(TriggerRun(pipeline="three", actor=ALICE)).state
    assert state is not None
    return state.run.id


def _claim(runner: str, limit: int) -> ClaimJobs:
    return ClaimJobs(runner=runner, limit=limit, lease_s=30)


def test_claims_in_one_commit_never_share_a_job_and_are_all_on_disk(
    db_url: str, make_service: MakeService
) -> None:
    svc = make_service(db_url, THREE_BY_TWO)
    runs = [_started(svc) for _ in range(3)]

    decided, taken = svc.commit([], [_claim("r1", 3), _claim("r2", 3), _claim("r3", 3)])

    assert decided == []
    handed = [[a.job_id for a in batch] for batch in taken]  # type: ignore[union-attr]
    assert [len(h) for h in handed] == [3, 3, 0]  # the 6 jobs of the three runs' first stages
    everyone = [job for h in handed for job in h]
    assert len(set(everyone)) == 6
    fresh = make_service(db_url)  # another process' view: what was committed
    on_disk = {
        job.id: (job.status, job.runner)
        for run_id in runs
        for job in fresh.find_run(run_id).jobs  # type: ignore[union-attr]
    }
    for runner, jobs in zip(["r1", "r2", "r3"], handed, strict=True):
        for job in jobs:
            assert on_disk[job] == (JobStatus.RUNNING, runner)


def test_a_claim_sees_the_jobs_a_report_before_it_in_the_batch_queued(
    db_url: str, make_service: MakeService
) -> None:
    svc = make_service(db_url, THREE_BY_TWO)
    run_id = _started(svc)
    first = svc.claim_jobs("r1", 2, 30)
    *earlier, last = first
    for a in earlier:
        svc.handle(
            CompleteJob(
                run_id=run_id,
                job_id=a.job_id,
                attempt=a.attempt,
                runner="r1",
                outcome="succeeded",
                exit_code=0,
            )
        )

    report = CompleteJob(
        run_id=run_id, job_id=last.job_id, attempt=last.attempt, runner="r1", outcome="succeeded", exit_code=0
    )
    decided, taken = svc.commit([report], [_claim("r1", 4)])

    assert decided[0].accepted  # type: ignore[union-attr]
    second_stage = [f"{run_id}.s1.j0", f"{run_id}.s1.j1"]  # (stage b's x and y)
    assert sorted(a.job_id for a in taken[0]) == second_stage  # type: ignore[union-attr]
    state = make_service(db_url).find_run(run_id)
    assert state is not None
    for job_id in second_stage:
        job = state.job(job_id)
        assert job is not None and job.status == JobStatus.RUNNING and job.runner == "r1"
