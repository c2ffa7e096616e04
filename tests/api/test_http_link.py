"""The runner protocol's client against a served Shipyard, in process: a ``Runner`` on an
``HttpLink`` runs a pipeline's jobs over HTTP and drains; its output arrives; a stale attempt's log
and report are refused (409); a server that does not answer is an outage the runner rides out,
and a refused token is said plainly."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.access import Role
from core.commands import CompleteJob, ExpireLease, ReportLateResult
from core.runtime.executor import SubprocessExecutor
from core.runtime.http_link import HttpLink, Refused, ServerUnreachable
from core.runtime.runner import Runner
from storage.directory import Directory
from tests.api.conftest import Api, StartApi

PIPELINE = """name: remote
stages:
  - name: build
    jobs: [{name: compile, run: "echo compiled; echo out=1 >> $SHIPYARD_OUTPUT"}]
  - name: test
    jobs: [{name: unit, run: "echo tested"}, {name: lint, run: "echo linted"}]
"""


def _token(api: Api, name: str, role: Role = Role.RUNNER) -> str:
    return Directory(api.store).create_token(name, [role], datetime.now(UTC), by="tests")


def _url(api: Api) -> str:
    return str(api.client.make_url("/")).rstrip("/")


async def test_a_runner_over_http_runs_a_pipeline_and_drains(
    db_url: str, start_api: StartApi, tmp_path: Path
) -> None:
    api = await start_api(db_url, {"remote": PIPELINE}, runner_capacity=0)
    link = HttpLink(_url(api), await api.db(_token, api, "eu-1"), "eu-1", claim_wait_s=0.5)
    runner = Runner(
        link, SubprocessExecutor(), name="eu-1", workdir=tmp_path, capacity=2, lease_s=5, poll_interval=0.1
    )
    await runner.start()
    try:
        run = await api.trigger("remote")
        done = await api.wait(run["id"], timeout=30)
    finally:
        await runner.drain()
        await link.close()
    assert done["status"] == "succeeded", done["reason"]
    jobs = [j for s in done["stages"] for j in s["jobs"]]
    assert {j["runner"] for j in jobs} == {"eu-1"}
    compile_job = jobs[0]
    assert compile_job["outputs"] == {"out": "1"}
    log = await api.get(f"/runs/{run['id']}/jobs/{compile_job['id']}/log")
    assert log.status == 200 and "compiled" in log.text


async def test_stale_attempts_are_refused_and_the_runner_is_told_plainly(
    db_url: str, start_api: StartApi
) -> None:
    api = await start_api(db_url, {"remote": PIPELINE}, runner_capacity=0)
    link = HttpLink(_url(api), await api.db(_token, api, "eu-1"), "eu-1", claim_wait_s=0)
    try:
        run = await api.trigger("remote")
        (claimed,) = await link.claim("eu-1", 1, 30)
        assert claimed.run_id == run["id"] and claimed.attempt == 1 and claimed.command
        assert await link.held("eu-1") == [(run["id"], claimed.job_id, 1)]
        assert await link.renew("eu-1", [(claimed.job_id, 1)], 30) == {claimed.job_id}
        assert await link.still_held("eu-1", [(claimed.job_id, 1), ("nope", 1)]) == {claimed.job_id}
        assert await link.append_log(claimed.job_id, 1, "eu-1", [("stdout", "hello\n")])
        assert not await link.append_log(claimed.job_id, 2, "eu-1", [("stdout", "stale\n")])  # 409
        done = await link.report(
            CompleteJob(
                run_id=run["id"],
                job_id=claimed.job_id,
                attempt=1,
                runner="eu-1",
                outcome="succeeded",
                exit_code=0,
            )
        )
        assert done.accepted
        again = await link.report(
            CompleteJob(
                run_id=run["id"],
                job_id=claimed.job_id,
                attempt=1,
                runner="eu-1",
                outcome="succeeded",
                exit_code=0,
            )
        )
        assert not again.accepted and "stale report" in again.reason
    finally:
        await link.close()
    viewer = HttpLink(_url(api), await api.db(_token, api, "watcher", Role.VIEWER), "watcher")
    with pytest.raises(Refused, match=r"the server refused this runner \(403\)"):
        await viewer.held("watcher")
    await viewer.close()


async def test_a_server_that_does_not_answer_is_an_outage_not_a_refusal() -> None:
    with_nothing = HttpLink("http://127.0.0.1:9", "token", "eu-1", timeout_s=1)  # (discard: refused)
    with pytest.raises(ServerUnreachable):
        await with_nothing.claim("eu-1", 1, 30)
    await with_nothing.close()
    await asyncio.sleep(0)


async def test_a_stale_report_of_a_job_named_protocol_is_a_refused_report_not_a_refused_runner(
    sqlite_url: str, start_api: StartApi
) -> None:
    """Only the server's protocol refusal stops the runner: a 409 whose detail merely names a
    job (or runner) with "protocol" in it is a stale report, answered as one."""
    pipeline = 'name: remote\nstages:\n  - name: build\n    jobs: [{name: protocol-check, run: "true"}]\n'
    api = await start_api(sqlite_url, {"remote": pipeline}, runner_capacity=0)
    link = HttpLink(_url(api), await api.db(_token, api, "eu-1"), "eu-1", claim_wait_s=0)
    try:
        run = await api.trigger("remote")
        (claimed,) = await link.claim("eu-1", 1, 30)
        job = {"run_id": run["id"], "job_id": claimed.job_id, "attempt": 1, "runner": "eu-1"}
        done = CompleteJob(**job, outcome="succeeded", exit_code=0)
        assert (await link.report(done)).accepted
        again = await link.report(done)
        assert not again.accepted and "stale report for job protocol-check" in again.reason
    finally:
        await link.close()


async def test_only_the_runner_that_lost_an_attempt_may_report_its_late_result(
    sqlite_url: str, start_api: StartApi
) -> None:
    """A runner acts only as itself: another runner's token cannot write how an attempt it
    never held ended beside the run (where a person checks what the lost attempt did)."""
    api = await start_api(sqlite_url, {"remote": PIPELINE}, runner_capacity=0)
    eu1 = HttpLink(_url(api), await api.db(_token, api, "eu-1"), "eu-1", claim_wait_s=0)
    eu2 = HttpLink(_url(api), await api.db(_token, api, "eu-2"), "eu-2", claim_wait_s=0)
    try:
        run = await api.trigger("remote")
        (claimed,) = await eu1.claim("eu-1", 1, 30)
        job = {"run_id": run["id"], "job_id": claimed.job_id, "attempt": 1}
        assert (await eu1.report(ExpireLease(**job, force=True))).accepted  # (eu-1 restarted)
        late = {**job, "outcome": "succeeded", "exit_code": 0}
        forged = await eu2.report(ReportLateResult(**late, runner="eu-2"))
        assert not forged.accepted and "eu-1" in forged.reason, forged.reason
        assert (await eu1.report(ReportLateResult(**late, runner="eu-1"))).accepted
    finally:
        await eu1.close()
        await eu2.close()
