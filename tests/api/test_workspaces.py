"""A runner's workspaces (``<work dir>/<run id>``) go once their runs are over: a remote runner
over HTTP removes them when it starts and on its sweep, never one of a run that is still going
on or that it still runs a job of, and never anything but a run's folder."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from core.access import Role
from core.runtime.executor import SubprocessExecutor
from core.runtime.http_link import HttpLink
from core.runtime.runner import Runner
from core.runtime.workspaces import RUNS_PER_ASK, Workspaces
from storage.directory import Directory
from tests.api.conftest import Api, StartApi, assert_problem
from tests.pipelines import gated, one_build, one_deploy

PIPELINES = {
    "quick": one_build("quick", '"echo built > made.txt"'),
    "held": gated(name="held", compile='"echo half > half.txt"'),
}


def _token(api: Api, name: str, role: Role = Role.RUNNER) -> str:
    return Directory(api.store).create_token(name, [role], datetime.now(UTC), by="tests")


async def _runner(api: Api, workdir: Path, name: str = "eu-1") -> tuple[Runner, HttpLink]:
    """A runner over HTTP working in ``workdir`` (made here; the test's database lies beside it)."""
    workdir.mkdir(parents=True, exist_ok=True)
    url = str(api.client.make_url("/")).rstrip("/")
    link = HttpLink(url, await api.db(_token, api, name), name, claim_wait_s=0.5)
    runner = Runner(
        link,
        SubprocessExecutor(),
        name=name,
        workdir=workdir,
        capacity=2,
        lease_s=5,
        poll_interval=0.1,
        sweep_every_s=3600,  # (the test sweeps when it wants to)
    )
    return runner, link


async def test_workspaces_of_ended_runs_go_and_the_rest_stay(
    db_url: str, start_api: StartApi, tmp_path: Path
) -> None:
    api = await start_api(db_url, PIPELINES, runner_capacity=0)
    work = tmp_path / "work"  # (the database lies beside it)
    work.mkdir()
    unknown = work / "0123456789abcdef0123456789abcdef"  # (a run this server never had)
    (unknown / "deep").mkdir(parents=True)
    (work / "notes.txt").write_text("not a workspace\n")
    runner, link = await _runner(api, work)
    await runner.start()
    try:
        async with asyncio.timeout(10):  # (the sweep at start)
            while unknown.exists():
                await asyncio.sleep(0.02)
        quick = await api.wait((await api.trigger("quick"))["id"], timeout=30)
        assert quick["status"] == "succeeded", quick["reason"]
        held = await api.wait_status((await api.trigger("held"))["id"], "waiting")
        assert held["status"] == "waiting", held["reason"]
        assert (work / quick["id"] / "made.txt").read_text() == "built\n"
        assert (work / held["id"] / "half.txt").read_text() == "half\n"

        async with asyncio.timeout(10):  # (a job's report can still be on its way back)
            while runner.jobs:
                await asyncio.sleep(0.02)
        assert await runner.sweep_workspaces() == 1
        assert not (work / quick["id"]).exists()
        assert (work / held["id"] / "half.txt").exists()  # (its next stage may need it)
        assert (work / "notes.txt").exists() and (work / ".runners" / "eu-1").is_dir()

        assert (await api.post(f"/runs/{held['id']}/cancel", "deployer")).status == 200
        await api.wait(held["id"])
        assert await runner.sweep_workspaces() == 1
        assert not (work / held["id"]).exists()
        assert sorted(p.name for p in work.iterdir()) == [".runners", "notes.txt"]
    finally:
        await runner.drain()
        await link.close()


async def test_a_run_the_runner_still_runs_a_job_of_keeps_its_workspace(
    db_url: str, start_api: StartApi, tmp_path: Path
) -> None:
    api = await start_api(db_url, PIPELINES, runner_capacity=0)
    work = tmp_path / "work"  # (the database lies beside it)
    _, link = await _runner(api, work)
    try:
        gone = "fedcba9876543210fedcba9876543210"
        for name in (gone, "../outside", ".hidden"):
            (work / name).mkdir(parents=True, exist_ok=True)
        asked: list[list[str]] = []

        async def over(run_ids: list[str]) -> set[str]:
            asked.append(run_ids)
            return {*run_ids, "../outside", ".hidden"}  # (an answer naming what was not asked)

        workspaces = Workspaces(work)
        assert await workspaces.sweep(over, lambda: {gone}) == 0  # (a job of it is ending)
        assert (work / gone).exists()
        assert await workspaces.sweep(over, set) == 1
        assert asked == [[gone], [gone]]
        assert not (work / gone).exists()
        assert (tmp_path / "outside").exists() and (work / ".hidden").exists()
        assert await link.runs_over("eu-1", []) == set()
    finally:
        await link.close()


async def test_many_workspaces_are_asked_about_in_batches(
    db_url: str, start_api: StartApi, tmp_path: Path
) -> None:
    api = await start_api(db_url, PIPELINES, runner_capacity=0)
    work = tmp_path / "work"  # (the database lies beside it)
    runner, link = await _runner(api, work)
    try:
        going = (await api.trigger("held"))["id"]  # (its job waits: no runner claims here)
        (work / going).mkdir()
        ended = [f"{n:032x}" for n in range(RUNS_PER_ASK + 7)]
        for run_id in ended:
            (work / run_id).mkdir()
        assert await runner.sweep_workspaces() == len(ended)
        assert [p.name for p in work.iterdir() if not p.name.startswith(".")] == [going]
    finally:
        await link.close()


async def test_the_runs_over_call_is_bounded_and_a_runner_asks_as_itself(
    db_url: str, start_api: StartApi
) -> None:
    api = await start_api(db_url, PIPELINES, runner_capacity=0)
    token = await api.db(_token, api, "eu-1")
    headers = {"Authorization": f"Bearer {token}", "Shipyard-Runner-Protocol": "1"}
    too_many = {"runner": "eu-1", "run_ids": [f"{n:032x}" for n in range(RUNS_PER_ASK + 1)]}
    reply = await api.post("/runner/runs-over", None, json=too_many, headers=headers)
    assert_problem(reply, 422, "run_ids")
    other = {"runner": "eu-2", "run_ids": ["a"]}
    reply = await api.post("/runner/runs-over", None, json=other, headers=headers)
    assert_problem(reply, 403, "eu-2")
    asked = {"runner": "eu-1", "run_ids": ["x" * 65]}
    assert_problem(await api.post("/runner/runs-over", None, json=asked, headers=headers), 422, "run_ids")
    fine = {"runner": "eu-1", "run_ids": ["a", "b"]}
    reply = await api.post("/runner/runs-over", None, json=fine, headers=headers)
    assert reply.status == 200 and reply.json == {"over": ["a", "b"]}


async def test_the_built_in_runner_removes_them_in_process(
    db_url: str, start_api: StartApi, tmp_path: Path
) -> None:
    api = await start_api(db_url, PIPELINES)
    runner = api.shipyard.runner
    quick = await api.wait((await api.trigger("quick"))["id"], timeout=30)
    assert quick["status"] == "succeeded", quick["reason"]
    workspace = tmp_path / "work" / "runs" / quick["id"]
    assert (workspace / "made.txt").read_text() == "built\n"
    async with asyncio.timeout(10):  # (a job's report can still be on its way back)
        while runner.jobs:
            await asyncio.sleep(0.02)
    assert await runner.sweep_workspaces() == 1
    assert not workspace.exists()


def _checked(name: str, check: str) -> str:
    """``name``: one deploy behind an automated gate that runs ``check`` every second."""
    return one_deploy(name, gate=f'{{type: automated, run: "{check}", interval: 1s, timeout: 60s}}')


async def test_a_server_without_a_runner_removes_its_gate_checks_workspaces(
    db_url: str, start_api: StartApi, tmp_path: Path
) -> None:
    """Automated gate checks run on the server, in ``<work dir>/runs/<run id>``: with no
    built-in runner to sweep that folder, the server does, at start and on its sweep."""
    runs = tmp_path / "work" / "runs"
    unknown = runs / "0123456789abcdef0123456789abcdef"  # (a run this server never had)
    unknown.mkdir(parents=True)
    checked = _checked("checked", "echo ok > checked.txt")
    api = await start_api(db_url, {"checked": checked}, runner_capacity=0)
    assert api.shipyard.runner is None
    async with asyncio.timeout(10):  # (the sweep at start)
        while unknown.exists():
            await asyncio.sleep(0.02)
    run = (await api.trigger("checked"))["id"]
    async with asyncio.timeout(30):  # the check passes; the job waits: no runner here
        while (await api.get(f"/runs/{run}")).json["stages"][0]["status"] != "running":
            await asyncio.sleep(0.05)
    assert (runs / run / "checked.txt").read_text() == "ok\n"
    orchestrator = api.shipyard.orchestrator
    assert await orchestrator.sweep_workspaces() == 0  # (the run goes on)
    assert (await api.post(f"/runs/{run}/cancel", "deployer")).status == 200
    await api.wait(run)
    assert await orchestrator.sweep_workspaces() == 1
    assert not (runs / run).exists()


async def test_a_gate_check_still_running_keeps_its_workspace(
    db_url: str, start_api: StartApi, tmp_path: Path
) -> None:
    api = await start_api(db_url, {"slow": _checked("slow", "touch started; sleep 30")}, runner_capacity=0)
    run = (await api.trigger("slow"))["id"]
    started = tmp_path / "work" / "runs" / run / "started"
    async with asyncio.timeout(30):
        while not started.exists():
            await asyncio.sleep(0.02)
    assert (await api.post(f"/runs/{run}/cancel", "deployer")).status == 200
    assert (await api.wait(run))["status"] == "canceled"
    assert await api.shipyard.orchestrator.sweep_workspaces() == 0  # (its check is still running)
    assert started.exists()
