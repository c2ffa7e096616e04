"""Pipelines executed end to end by the built-in runner, with real subprocesses."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from core.commands import ApproveGate, CancelRun, PauseRun, RejectGate, ResumeRun, RetryRun
from core.states import GateStatus, JobStatus, RunStatus, StageStatus
from tests.engine.conftest import StartShipyard, send, trigger, wait_for
from tests.helpers import ALICE, BOB, CAROL, DAVE, alive, written
from tests.pipelines import gated, one_job

ENV_PIPELINE = """
name: envs
parameters:
  - {name: ref, required: true}
  - {name: dry_run, type: boolean, default: false}
stages:
  - name: build
    jobs:
      - name: compile
        run: |
          echo "image=web:$SHIPYARD_PARAM_REF" >> "$SHIPYARD_OUTPUT"
          echo "note=built by $SHIPYARD_JOB" >> "$SHIPYARD_OUTPUT"
  - name: deploy-staging
    environment: staging
    jobs:
      - name: deploy
        run: |
          env | grep -E '^(SHIPYARD_|SLACK_)' | sort > "$SHIPYARD_WORKSPACE/env.txt"
"""


async def test_parameters_and_outputs_reach_later_jobs_as_environment_variables(
    sqlite_url: str, start_shipyard: StartShipyard, tmp_path: Path
) -> None:
    os.environ["SLACK_SIGNING_SECRET"] = "s3cret"  # a server secret jobs must not see
    try:
        shipyard = await start_shipyard(sqlite_url, {"envs": ENV_PIPELINE})
        run = await trigger(shipyard, "envs", ref="abc; rm -rf /")
        state = await wait_for(shipyard, run.run.id)
    finally:
        del os.environ["SLACK_SIGNING_SECRET"]
    assert state.run.status is RunStatus.SUCCEEDED
    env = dict(
        line.split("=", 1)
        for line in (tmp_path / "work" / "runs" / run.run.id / "env.txt").read_text().splitlines()
    )
    assert env["SHIPYARD_PARAM_REF"] == "abc; rm -rf /"  # passed verbatim, never through a shell string
    assert env["SHIPYARD_PARAM_DRY_RUN"] == "false"
    assert env["SHIPYARD_OUTPUT_BUILD_IMAGE"] == "web:abc; rm -rf /"
    assert env["SHIPYARD_OUTPUT_BUILD_NOTE"] == "built by compile"
    assert env["SHIPYARD_STAGE"] == "deploy-staging"
    assert env["SHIPYARD_JOB"] == "deploy"
    assert env["SHIPYARD_ENVIRONMENT"] == "staging"
    assert env["SHIPYARD_PIPELINE"] == "envs"
    assert env["SHIPYARD_RUN_ID"] == run.run.id
    assert not any(key.startswith("SLACK_") for key in env)
    assert state.jobs[0].outputs == {"image": "web:abc; rm -rf /", "note": "built by compile"}


async def test_a_timed_out_job_has_its_whole_process_group_killed(
    sqlite_url: str, start_shipyard: StartShipyard, tmp_path: Path
) -> None:
    pidfile = tmp_path / "child.pid"
    shipyard = await start_shipyard(
        sqlite_url,
        {
            "slow": f"""
        name: slow
        stages:
          - name: s
            jobs:
              - name: hang
                timeout: 1s
                run: "sleep 60 & echo $! > {pidfile}; wait"
    """
        },
    )
    run = await trigger(shipyard, "slow")
    state = await wait_for(shipyard, run.run.id)
    assert state.run.status is RunStatus.FAILED
    assert state.jobs[0].status is JobStatus.TIMED_OUT
    assert "timed out after 1.0s" in state.run.reason
    child = int(pidfile.read_text())
    await asyncio.sleep(0.1)
    assert not alive(child), "the job's background child outlived the timeout"


async def test_cancel_kills_the_running_job_at_once(
    sqlite_url: str, start_shipyard: StartShipyard, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    shipyard = await start_shipyard(
        sqlite_url,
        {
            "long": f"""
        name: long
        stages:
          - name: s
            jobs:
              - {{name: sleep, run: "echo $$ > {started}; sleep 60"}}
          - name: never
            jobs:
              - {{name: after, run: "touch {tmp_path}/after-ran"}}
    """
        },
    )
    run = await trigger(shipyard, "long")
    await wait_for(shipyard, run.run.id, lambda s: s.jobs[0].status is JobStatus.RUNNING and written(started))
    pid = int(started.read_text())
    decision = await send(shipyard, CancelRun(run_id=run.run.id, actor=BOB, reason="wrong build"))
    assert decision.accepted and decision.jobs_to_stop == ((run.jobs[0].id, 1),)
    for _ in range(50):
        if not alive(pid):
            break
        await asyncio.sleep(0.05)
    assert not alive(pid)
    state = await wait_for(shipyard, run.run.id)
    assert state.run.status is RunStatus.CANCELED
    assert state.run.reason == "canceled by bob: wrong build"
    assert [j.status for j in state.jobs] == [JobStatus.CANCELED, JobStatus.SKIPPED]
    assert not (tmp_path / "after-ran").exists()


async def test_a_failing_job_is_retried_then_succeeds(
    sqlite_url: str, start_shipyard: StartShipyard, tmp_path: Path
) -> None:
    marker = tmp_path / "tried"
    shipyard = await start_shipyard(
        sqlite_url,
        {
            "flaky": f"""
        name: flaky
        stages:
          - name: s
            jobs:
              - name: flaky
                retries: 1
                run: "if [ -e {marker} ]; then echo second; else touch {marker}; echo first; exit 3; fi"
    """
        },
    )
    run = await trigger(shipyard, "flaky")
    state = await wait_for(shipyard, run.run.id)
    assert state.run.status is RunStatus.SUCCEEDED
    job = state.jobs[0]
    assert (job.attempt, job.failures, job.exit_code) == (2, 1, 0)
    logs = {c.attempt: c.text for c in shipyard.store.read_log(job.id, 1)}
    assert logs == {1: "first\n"}
    assert shipyard.store.tail_log(job.id) == ["second"]
    retry_events = [e for e in shipyard.store.events_after(0, 1000, run.run.id) if e.name == "job.queued"]
    assert "retry 1 of 1 after: exited with 3" in str(retry_events[-1].data["reason"])


async def test_a_required_failure_fails_the_run_and_an_allowed_one_only_warns(
    sqlite_url: str, start_shipyard: StartShipyard
) -> None:
    shipyard = await start_shipyard(
        sqlite_url,
        {
            "warns": """
            name: warns
            stages:
              - name: build
                jobs: [{name: ok, run: "true"}, {name: lint, run: "exit 1", allow_failure: true}]
              - {name: ship, jobs: [{name: ok, run: "true"}]}
        """,
            "breaks": """
            name: breaks
            stages:
              - {name: build, jobs: [{name: ok, run: "true"}, {name: broken, run: "echo boom >&2; exit 2"}]}
              - {name: ship, jobs: [{name: ok, run: "true"}]}
        """,
        },
    )
    warned = await wait_for(shipyard, (await trigger(shipyard, "warns")).run.id)
    assert warned.run.status is RunStatus.SUCCEEDED
    assert [s.status for s in warned.stages] == [StageStatus.PARTIAL, StageStatus.SUCCEEDED]
    assert warned.run.warnings == ("stage build: job lint exited with 1 (allowed to fail)",)
    broken = await wait_for(shipyard, (await trigger(shipyard, "breaks")).run.id)
    assert broken.run.status is RunStatus.FAILED
    assert broken.run.reason == "job build/broken exited with 2"
    assert [s.status for s in broken.stages] == [StageStatus.FAILED, StageStatus.SKIPPED]
    assert shipyard.store.tail_log(broken.jobs[1].id) == ["boom"]


async def test_pause_lets_running_jobs_finish_and_starts_nothing_until_resumed(
    sqlite_url: str, start_shipyard: StartShipyard, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    shipyard = await start_shipyard(
        sqlite_url,
        {
            "two": f"""
        name: two
        stages:
          - {{name: first, jobs: [{{name: wait, run: "while [ ! -e {go} ]; do sleep 0.05; done"}}]}}
          - {{name: second, jobs: [{{name: next, run: "true"}}]}}
    """
        },
    )
    run = await trigger(shipyard, "two")
    await wait_for(shipyard, run.run.id, lambda s: s.jobs[0].status is JobStatus.RUNNING)
    assert (await send(shipyard, PauseRun(run_id=run.run.id, actor=ALICE))).accepted
    go.touch()
    paused = await wait_for(shipyard, run.run.id, lambda s: s.jobs[0].status is JobStatus.SUCCEEDED)
    await asyncio.sleep(0.3)  # several runner polls: nothing may start while paused
    paused = await wait_for(shipyard, run.run.id, lambda s: True)
    assert paused.run.status is RunStatus.PAUSED
    assert paused.jobs[1].status is JobStatus.PENDING
    assert (await send(shipyard, ResumeRun(run_id=run.run.id, actor=ALICE))).accepted
    done = await wait_for(shipyard, run.run.id)
    assert done.run.status is RunStatus.SUCCEEDED


#: the build hands ``v=1`` on to the deploy, which checks it
GATED = gated(
    compile='"echo v=1 >> $SHIPYARD_OUTPUT"', deploy='"test $SHIPYARD_OUTPUT_BUILD_V = 1"', min_approvals=2
)


async def test_a_gate_waits_for_enough_approvals(sqlite_url: str, start_shipyard: StartShipyard) -> None:
    shipyard = await start_shipyard(sqlite_url, {"gated": GATED})
    run = await trigger(shipyard, "gated")
    waiting = await wait_for(shipyard, run.run.id, lambda s: s.run.status is RunStatus.WAITING)
    assert waiting.gates[0].status is GateStatus.OPEN
    assert (await send(shipyard, ApproveGate(run_id=run.run.id, gate="production", actor=CAROL))).accepted
    twice = await send(shipyard, ApproveGate(run_id=run.run.id, gate="production", actor=CAROL))
    assert not twice.accepted and "already approved" in twice.reason
    assert (await send(shipyard, ApproveGate(run_id=run.run.id, gate="production", actor=DAVE))).accepted
    done = await wait_for(shipyard, run.run.id)
    assert done.run.status is RunStatus.SUCCEEDED
    assert [a.actor for a in done.gates[0].approvals] == ["carol", "dave"]


async def test_a_rejected_gate_fails_the_run_and_retry_resumes_from_the_failed_stage(
    sqlite_url: str, start_shipyard: StartShipyard
) -> None:
    shipyard = await start_shipyard(
        sqlite_url, {"gated": GATED.replace("min_approvals: 2", "min_approvals: 1")}
    )
    run = await trigger(shipyard, "gated")
    await wait_for(shipyard, run.run.id, lambda s: s.run.status is RunStatus.WAITING)
    await send(shipyard, RejectGate(run_id=run.run.id, gate="production", actor=DAVE, reason="freeze"))
    failed = await wait_for(shipyard, run.run.id)
    assert failed.run.status is RunStatus.FAILED
    assert failed.run.reason == "gate production rejected: rejected by dave: freeze"
    retry = await send(shipyard, RetryRun(run_id=run.run.id, actor=ALICE))
    assert retry.accepted and retry.state is not None
    new = retry.state
    assert new.run.retry_of == run.run.id and new.run.number == 2
    assert new.stages[0].status is StageStatus.SKIPPED and new.jobs[0].outputs == {"v": "1"}
    await wait_for(shipyard, new.run.id, lambda s: s.run.status is RunStatus.WAITING)
    await send(shipyard, ApproveGate(run_id=new.run.id, gate="production", actor=DAVE))
    done = await wait_for(shipyard, new.run.id)
    assert done.run.status is RunStatus.SUCCEEDED  # the deploy read build's output carried over


async def test_an_automated_gate_polls_its_check_until_it_passes(
    sqlite_url: str, start_shipyard: StartShipyard, tmp_path: Path
) -> None:
    healthy = tmp_path / "healthy"
    shipyard = await start_shipyard(
        sqlite_url,
        {
            "auto": f"""
        name: auto
        stages:
          - name: prod
            gate: {{type: automated, run: "test -e {healthy}", interval: 1s, timeout: 30s}}
            jobs: [{{name: deploy, run: "true"}}]
    """
        },
    )
    run = await trigger(shipyard, "auto")
    await wait_for(shipyard, run.run.id, lambda s: s.run.status is RunStatus.WAITING)
    await asyncio.sleep(0.3)
    still = await wait_for(shipyard, run.run.id, lambda s: True)
    assert still.gates[0].status is GateStatus.OPEN
    healthy.touch()
    done = await wait_for(shipyard, run.run.id)
    assert done.run.status is RunStatus.SUCCEEDED
    assert done.gates[0].decided_by == "check"


async def test_output_beyond_the_log_limit_keeps_the_head_and_the_tail(
    sqlite_url: str, start_shipyard: StartShipyard
) -> None:
    shipyard = await start_shipyard(
        sqlite_url,
        {"noisy": one_job("noisy", '"seq 1 20000; echo last-line"', job="spam")},
        max_log_bytes=4096,
    )
    run = await trigger(shipyard, "noisy")
    state = await wait_for(shipyard, run.run.id)
    assert state.run.status is RunStatus.SUCCEEDED
    text = "".join(c.text for c in shipyard.store.read_log(state.jobs[0].id))
    assert text.startswith("1\n2\n3\n")
    assert "characters of output omitted]" in text
    assert text.endswith("20000\nlast-line\n")
    assert len(text) < 4096 + 70000
    assert shipyard.store.tail_log(state.jobs[0].id, 2) == ["20000", "last-line"]


async def test_a_command_that_cannot_start_fails_with_a_clear_reason(
    sqlite_url: str, start_shipyard: StartShipyard
) -> None:
    shipyard = await start_shipyard(
        sqlite_url,
        {"argv": one_job("argv", '["/nonexistent/tool", "--flag"]', job="missing")},
    )
    state = await wait_for(shipyard, (await trigger(shipyard, "argv")).run.id)
    assert state.run.status is RunStatus.FAILED
    assert state.run.reason == "job s/missing exited with 127: command not found"
    assert "/nonexistent/tool" in "\n".join(shipyard.store.tail_log(state.jobs[0].id))


async def test_binary_output_is_stored_on_every_database(db_url: str, start_shipyard: StartShipyard) -> None:
    shipyard = await start_shipyard(
        db_url,
        {
            "binary": """
        name: binary
        stages:
          - {name: s, jobs: [{name: j, run: "printf 'bin\\\\000ary\\\\n'; echo k=v >> $SHIPYARD_OUTPUT"}]}
    """
        },
    )
    state = await wait_for(shipyard, (await trigger(shipyard, "binary")).run.id)
    assert state.run.status is RunStatus.SUCCEEDED
    assert state.jobs[0].attempt == 1
    assert shipyard.store.tail_log(state.jobs[0].id) == ["bin\ufffdary"]


async def test_a_run_past_its_pipeline_timeout_fails_and_its_job_processes_die(
    sqlite_url: str, start_shipyard: StartShipyard, tmp_path: Path
) -> None:
    pidfile = tmp_path / "job.pid"
    shipyard = await start_shipyard(
        sqlite_url,
        {
            "stuck": f"""
        name: stuck
        timeout: 1s
        stages:
          - name: s
            jobs:
              - name: hang
                run: "sleep 60 & echo $! > {pidfile}; wait"
    """
        },
        poll_interval=0.05,
    )
    run = await trigger(shipyard, "stuck")
    state = await wait_for(shipyard, run.run.id)
    assert state.run.status is RunStatus.FAILED
    assert state.run.reason == "timed out: the run took longer than its timeout of 1.0s"
    assert state.jobs[0].status is JobStatus.CANCELED
    child = int(pidfile.read_text())
    for _ in range(100):
        if not alive(child):
            break
        await asyncio.sleep(0.05)
    assert not alive(child), "the job outlived its run's timeout"


WIDE = """
name: wide
stages:
  - name: fan
    jobs:
{jobs}
  - name: after
    jobs: [{{name: last, run: "{step}"}}]
"""


async def test_a_runner_never_runs_more_jobs_at_once_than_its_capacity(
    sqlite_url: str, start_shipyard: StartShipyard, tmp_path: Path
) -> None:
    """A finished job's slot is handed on while its report is still on its way (the next claim
    rides in the same commit), but its process has ended: processes alive never exceed it."""
    ledger = tmp_path / "ledger.txt"
    step = f"echo start $(date +%s%N) >> {ledger}; sleep 0.2; echo end $(date +%s%N) >> {ledger}"
    jobs = "\n".join(f'      - {{name: j{i}, run: "{step}"}}' for i in range(6))
    shipyard = await start_shipyard(
        sqlite_url, {"wide": WIDE.format(jobs=jobs, step=step)}, runner_capacity=2
    )
    runs = [await trigger(shipyard, "wide") for _ in range(2)]
    for run in runs:
        assert (await wait_for(shipyard, run.run.id)).run.status is RunStatus.SUCCEEDED
    marks = sorted((int(t), kind) for kind, t in (line.split() for line in ledger.read_text().splitlines()))
    assert len(marks) == 2 * 2 * 7  # every job of both runs started and ended once
    alive_now, most = 0, 0
    for _, kind in marks:  # (an end and a start at the same nanosecond: the end sorts first)
        alive_now += 1 if kind == "start" else -1
        most = max(most, alive_now)
    assert most == 2
