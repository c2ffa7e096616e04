"""Runner labels and runners as resources, for real: a ``shipyard serve`` that runs no job
itself and ``shipyard runner`` processes with ``--labels``, each granted to its token. A job goes
only to a runner carrying all its labels, and a runner carries only labels granted to it; an
environment's ``runner_labels`` hold even when the pipeline asks for none, and a run whose job no
online runner can take says why it waits. ``GET /api/v1/runners`` lists runners with their state
and jobs; a drain makes a runner finish its job and exit; an offline runner can be forgotten, one
holding jobs cannot."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.e2e.server import wait_until
from tests.e2e.test_remote_runner import (
    ADMIN,
    RemoteRunner,
    _call,
    _done,
    _run,
    _server,
    _tokens,
    _trigger,
    started,
)

__all__ = ["started"]  # (the fixture, for pytest)


def _runners(server: Any) -> dict[str, dict[str, Any]]:
    status, body = _call(server, "GET", "/runners", ADMIN)
    assert status == 200, body
    return {r["name"]: r for r in body["items"]}


def _job(server: Any, run_id: str, stage: int = 0) -> dict[str, Any]:
    return dict(_run(server, run_id)["stages"][stage]["jobs"][0])


def test_a_job_runs_only_on_a_runner_carrying_its_labels(
    tmp_path: Path, db_url: str, started: list[Any]
) -> None:
    pipeline = (
        "name: train\nstages:\n"
        "  - name: any\n    jobs: [{name: prep, run: 'echo prep'}]\n"
        "  - name: fit\n    runs_on: [linux]\n    jobs: [{name: fit, runs_on: [gpu], run: 'echo fit'}]\n"
    )
    server = _server(tmp_path, db_url, started, {"train": pipeline})
    tokens = _tokens(db_url, "cpu-1", "gpu-1", labels={"cpu-1": "linux", "gpu-1": "linux,gpu"})
    cpu = RemoteRunner(tmp_path, server, "cpu-1", tokens["cpu-1"], labels="linux").start()
    started.append(cpu)
    run_id = _trigger(server, "train")
    # the first stage runs on the CPU runner; the GPU job waits, saying why
    wait_until(lambda: _job(server, run_id)["status"] == "succeeded", 20, what="the first stage")
    fit = wait_until(
        lambda: (j := _job(server, run_id, 1))["waiting_for"] and j, 20, 0.2, what="the GPU job to wait"
    )
    assert fit["status"] == "queued" and fit["labels"] == ["gpu", "linux"]
    assert re.fullmatch(r"waiting for a runner with gpu, linux: none has ever connected", fit["waiting_for"])
    assert _run(server, run_id)["waiting_for"] == fit["waiting_for"]
    started.append(RemoteRunner(tmp_path, server, "gpu-1", tokens["gpu-1"], labels="linux,gpu").start())
    run = _done(server, run_id)
    assert run["status"] == "succeeded" and run["waiting_for"] == ""
    assert [s["jobs"][0]["runner"] for s in run["stages"]] == ["cpu-1", "gpu-1"]
    listed = _runners(server)
    assert listed["gpu-1"]["labels"] == ["gpu", "linux"] and listed["cpu-1"]["labels"] == ["linux"]
    assert listed["gpu-1"]["state"] == "online" and listed["gpu-1"]["capacity"] == 2


def test_an_environments_runner_labels_hold_whatever_the_pipeline_says(
    tmp_path: Path, db_url: str, started: list[Any]
) -> None:
    pipeline = (
        "name: web\nstages:\n"
        "  - name: deploy\n    environment: production\n    runs_on: []\n"
        "    jobs: [{name: ship, runs_on: [], run: 'echo shipped'}]\n"
    )
    environments = json.dumps({"production": {"runner_labels": ["prod-eu"]}})
    server = _server(tmp_path, db_url, started, {"web": pipeline}, environments=environments)
    tokens = _tokens(db_url, "dev-1", "prod-1", labels={"dev-1": "linux,staging", "prod-1": "prod-eu"})
    dev = RemoteRunner(tmp_path, server, "dev-1", tokens["dev-1"], labels="linux,staging").start()
    started.append(dev)
    # a runner saying it carries prod-eu, which its token was not granted, is refused and exits
    # (production's secrets go to runners by that label)
    rogue = RemoteRunner(
        tmp_path, server, "rogue", _tokens(db_url, "rogue")["rogue"], labels="prod-eu"
    ).start()
    started.append(rogue)
    assert rogue.proc is not None and rogue.proc.wait(20) == 2
    assert "runner rogue may not carry label prod-eu" in rogue.log.read_text()
    wait_until(lambda: "dev-1" in _runners(server), 20, what="dev-1 to be listed")
    run_id = _trigger(server, "web")
    job = wait_until(lambda: (j := _job(server, run_id))["waiting_for"] and j, 20, 0.2, what="a wait")
    assert job["status"] == "queued" and job["runner"] is None and job["labels"] == ["prod-eu"]
    assert job["waiting_for"] == "waiting for a runner with prod-eu: none has ever connected"
    prod = RemoteRunner(tmp_path, server, "prod-1", tokens["prod-1"], labels="prod-eu").start()
    started.append(prod)
    run = _done(server, run_id)
    assert run["status"] == "succeeded" and run["stages"][0]["jobs"][0]["runner"] == "prod-1"
    # the production runner goes away: the next deploy waits, saying since when none is online
    assert prod.proc is not None
    prod.proc.kill()
    prod.proc.wait()
    wait_until(lambda: _runners(server)["prod-1"]["state"] == "offline", 20, 0.2, what="prod-1 offline")
    second = _trigger(server, "web")
    job = wait_until(lambda: (j := _job(server, second))["waiting_for"] and j, 20, 0.2, what="a wait")
    since = r"waiting for a runner with prod-eu: none online since \d\d:\d\d UTC"
    assert re.fullmatch(since, job["waiting_for"]), job
    assert _job(server, second)["status"] == "queued"  # dev-1, online all along, never took it


def test_drain_list_and_delete_runners(tmp_path: Path, db_url: str, started: list[Any]) -> None:
    began, release = tmp_path / "began", tmp_path / "release"
    work = f"touch {began}; while [ ! -e {release} ]; do sleep 0.1; done; echo done"
    pipeline = f"name: long\nstages:\n  - name: only\n    jobs: [{{name: work, run: '{work}'}}]\n"
    server = _server(tmp_path, db_url, started, {"long": pipeline})
    token = _tokens(db_url, "eu-1", labels={"eu-1": "linux"})["eu-1"]
    runner = RemoteRunner(tmp_path, server, "eu-1", token, labels="linux").start()
    started.append(runner)
    first = _trigger(server, "long")
    wait_until(began.exists, 20, what="the job to start")
    listed = wait_until(lambda: (r := _runners(server).get("eu-1")) and r["running"] == 1 and r, 20, 0.2)
    assert listed["state"] == "online" and listed["online"] and listed["version"]
    # a runner holding a job cannot be forgotten
    status, problem = _call(server, "DELETE", "/runners/eu-1", ADMIN)
    assert status == 409 and "holds 1 job" in problem["detail"], problem
    # only admins drain; a runner's own token cannot
    assert _call(server, "POST", "/runners/eu-1/drain", token)[0] == 403
    status, drained = _call(server, "POST", "/runners/eu-1/drain", ADMIN)
    assert status == 200 and drained["state"] == "draining", drained
    second = _trigger(server, "long")
    wait_until(lambda: "draining (the server drained this runner)" in runner.log.read_text(), 20, 0.1)
    job = wait_until(lambda: (j := _job(server, second))["waiting_for"] and j, 20, 0.2, what="a wait")
    assert job["waiting_for"] == "waiting for a runner: eu-1 is draining (an admin may resume it)"
    release.touch()
    assert runner.proc is not None and runner.proc.wait(30) == 0  # its job finished, then it exited
    assert _done(server, first)["status"] == "succeeded"
    assert _job(server, second)["status"] == "queued"  # nobody claimed it
    listed = wait_until(lambda: (r := _runners(server)["eu-1"]) and not r["online"] and r, 20, 0.2)
    assert listed["state"] == "draining" and listed["running"] == 0
    # started again while drained, it claims nothing and stops at once; resumed, it works again
    again = RemoteRunner(tmp_path, server, "eu-1", token, labels="linux").start()
    started.append(again)
    assert again.proc is not None and again.proc.wait(30) == 0
    assert _job(server, second)["status"] == "queued"
    status, resumed = _call(server, "POST", "/runners/eu-1/resume", ADMIN)
    assert status == 200 and resumed["state"] != "draining"
    started.append(RemoteRunner(tmp_path, server, "eu-1", token, labels="linux").start())
    assert _done(server, second)["status"] == "succeeded"
    # unknown runners are named as such; a runner gone offline is forgotten
    status, problem = _call(server, "POST", "/runners/nobody/drain", ADMIN)
    assert status == 404 and "no runner 'nobody' has connected (runners: eu-1)" in problem["detail"]
    started[-1].stop()
    wait_until(lambda: _runners(server)["eu-1"]["state"] == "offline", 20, 0.2, what="eu-1 offline")
    status, forgotten = _call(server, "DELETE", "/runners/eu-1", ADMIN)
    assert status == 200 and forgotten["name"] == "eu-1", forgotten
    assert _runners(server) == {}
    audit = _call(server, "GET", "/audit?limit=50", ADMIN)[1]
    actions = {e["action"] for e in audit["items"]}
    assert {"drain_runner", "resume_runner", "delete_runner"} <= actions, actions
