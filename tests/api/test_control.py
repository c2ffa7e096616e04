"""Cancel, pause, resume and retry: the happy paths, and 409 naming the state when the run's
state does not allow the transition."""

from __future__ import annotations

import asyncio
import re

from tests.api.conftest import Api, StartApi, assert_problem


def job_status(run: dict[str, object]) -> str:
    return run["stages"][0]["jobs"][0]["status"]  # type: ignore[index, no-any-return]


async def test_cancel_kills_the_running_job_and_a_second_cancel_is_409_naming_the_state(api: Api) -> None:
    run = await api.trigger("slow")
    await api.wait(run["id"], lambda r: job_status(r) == "running")
    reply = await api.post(f"/runs/{run['id']}/cancel", "deployer", json={"reason": "wrong branch"})
    assert reply.status == 200, reply.text
    assert reply.json["status"] == "canceled"
    assert "wrong branch" in reply.json["reason"]
    done = await api.wait(run["id"], lambda r: job_status(r) == "canceled")
    assert done["status"] == "canceled"

    again = await api.post(f"/runs/{run['id']}/cancel", "deployer")
    assert_problem(again, 409, "canceled")


async def test_pause_and_resume_and_their_invalid_transitions(api: Api) -> None:
    run = await api.trigger("slow")
    path = f"/runs/{run['id']}"
    assert_problem(await api.post(path + "/resume", "deployer"), 409, "running", "not paused")

    paused = await api.post(path + "/pause", "deployer")
    assert paused.status == 200, paused.text
    assert paused.json["status"] == "paused"
    assert_problem(await api.post(path + "/pause", "deployer"), 409, "paused")

    resumed = await api.post(path + "/resume", "deployer")
    assert resumed.status == 200, resumed.text
    assert resumed.json["status"] == "running"

    assert (await api.post(path + "/cancel", "deployer")).status == 200
    assert_problem(await api.post(path + "/pause", "deployer"), 409, "canceled")
    assert_problem(await api.post(path + "/resume", "deployer"), 409, "canceled")


async def test_retry_starts_a_new_run_of_a_failed_one_and_refuses_a_succeeded_one(api: Api) -> None:
    failed = await api.wait((await api.trigger("broken"))["id"])
    assert failed["status"] == "failed"
    assert failed["stages"][0]["jobs"][0]["exit_code"] == 1

    reply = await api.post(f"/runs/{failed['id']}/retry", "deployer")
    assert reply.status == 202, reply.text
    retry = reply.json
    assert reply.headers["Location"] == f"/api/v1/runs/{retry['id']}"
    assert retry["id"] != failed["id"]
    assert retry["retry_of"] == failed["id"]
    assert retry["ref"] == "broken#2"
    assert (await api.wait(retry["id"]))["status"] == "failed"

    ok = await api.wait((await api.trigger("quick"))["id"])
    assert ok["status"] == "succeeded"
    assert_problem(await api.post(f"/runs/{ok['id']}/retry", "deployer"), 409, "succeeded")


async def test_a_run_is_retried_once_even_by_two_at_the_same_moment(api: Api) -> None:
    """Two retries of one failed run would deploy it twice: the second is refused, naming the
    first, which may be retried in its turn."""
    failed = await api.wait((await api.trigger("broken"))["id"])
    path = f"/runs/{failed['id']}/retry"
    answers = await asyncio.gather(*(api.post(path, "deployer") for _ in range(4)))
    assert sorted(a.status for a in answers) == [202, 409, 409, 409], [a.text for a in answers]
    (first,) = [a.json for a in answers if a.status == 202]
    for refused in (a for a in answers if a.status == 409):
        assert_problem(refused, 409, "retried already", first["ref"])
    assert_problem(await api.post(path, "deployer"), 409, f"as {first['ref']}")
    assert (await api.wait(first["id"]))["status"] == "failed"
    again = await api.post(f"/runs/{first['id']}/retry", "deployer")
    assert again.status == 202, again.text
    assert again.json["retry_of"] == first["id"]
    runs = (await api.get("/runs?pipeline=broken")).json["items"]
    assert sorted(r["ref"] for r in runs) == ["broken#1", "broken#2", "broken#3"]


async def test_control_of_an_unknown_run_is_404(api: Api) -> None:
    for verb in ("cancel", "pause", "resume", "retry"):
        assert_problem(await api.post(f"/runs/nosuchrun/{verb}", "admin"), 404, "nosuchrun")


async def test_stuck_runs_are_listed_with_what_they_wait_for_and_go_away_when_canceled(
    db_url: str, start_api: StartApi
) -> None:
    api = await start_api(db_url, runner_capacity=0, stuck_after_seconds=1.0)  # nobody claims jobs
    run = await api.trigger("slow")
    fresh = await api.get("/runs?stuck=true")
    assert fresh.status == 200 and fresh.json["items"] == []

    await asyncio.sleep(1.1)
    stuck = await api.get("/runs?stuck=true")
    assert stuck.status == 200, stuck.text
    [item] = stuck.json["items"]
    assert item["id"] == run["id"] and item["status"] == "running"
    assert re.fullmatch(
        r"job wait/sleep queued for 1(\.\d)?s: no runner has claimed it", item["stuck"]["reason"]
    )
    assert item["stuck"]["since"] >= run["created_at"]

    canceled = await api.post(f"/runs/{run['id']}/cancel", "deployer", json={"reason": "zombie"})
    assert canceled.status == 200, canceled.text
    assert (await api.get("/runs?stuck=true")).json["items"] == []


async def test_fail_marks_a_run_failed_with_who_and_why(api: Api) -> None:
    run = await api.trigger("slow")
    failed = await api.post(f"/runs/{run['id']}/fail", "deployer", json={"reason": "runner host gone"})
    assert failed.status == 200, failed.text
    assert failed.json["status"] == "failed"
    assert failed.json["reason"] == "marked failed by deployer: runner host gone"
    assert_problem(await api.post(f"/runs/{run['id']}/fail", "deployer"), 409, "already failed")
