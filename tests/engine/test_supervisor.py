"""The job supervisor when its server dies: a job that has exited is recorded, one that runs is
killed, and nothing the job left in its process group outlives the server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.runtime.executor import SUPERVISOR
from tests.e2e.server import wait_until

#: a stand-in for the server: starts the supervisor as its child, prints its pid, then waits
SERVER = """
import os, subprocess, sys, time
argv = sys.argv[1:]
p = subprocess.Popen([*argv[:4], str(os.getpid()), *argv[4:]], start_new_session=True)
print(p.pid, flush=True)
time.sleep(120)
"""


def _state(pid: int) -> str | None:
    """The process' state letter (``Z`` for a zombie), None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _alive(pid: int) -> bool:
    return _state(pid) not in (None, "Z")


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    made: list[subprocess.Popen[str]] = []

    def start(command: str) -> tuple[subprocess.Popen[str], int]:
        outputs = tmp_path / "outputs"
        outputs.write_text("version=7\n")
        env = {**os.environ, "SHIPYARD_OUTPUT": str(outputs)}
        argv = [sys.executable, "-c", SERVER, *SUPERVISOR, str(tmp_path / "record"), "sh", "-c", command]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
        made.append(proc)
        assert proc.stdout is not None
        return proc, int(proc.stdout.readline())

    yield start  # type: ignore[misc]
    for proc in made:
        proc.kill()
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]


def test_a_job_that_exited_just_before_its_server_died_is_recorded_not_killed(tmp_path: Path, server) -> None:
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    left = tmp_path / "left"
    proc, supervisor = server(f"sleep 60 & echo $! > {left}; read x < {fifo}; exit 5")
    job = wait_until(lambda: _children(supervisor)[0] if _children(supervisor) else None, what="the job")
    wait_until(lambda: left.exists() and left.read_text().strip(), what="the job's background process")
    background = int(left.read_text())

    os.kill(supervisor, signal.SIGSTOP)  # the supervisor is slow to notice the job's exit...
    with fifo.open("w") as go:
        go.write("now\n")
    wait_until(lambda: _state(job) == "Z", what="the job to exit")
    proc.kill()  # ...and its server dies before it records it
    proc.wait()
    os.kill(supervisor, signal.SIGCONT)

    wait_until(lambda: not _alive(supervisor), what="the supervisor to end")
    record = tmp_path / "record~5"
    assert record.read_text() == "version=7\n"  # the job's real exit code and outputs
    wait_until(lambda: not _alive(background), what="the job's background process to die with the server")


def test_a_job_still_running_when_its_server_dies_is_killed_and_not_recorded(tmp_path: Path, server) -> None:
    proc, supervisor = server("sleep 60")
    job = wait_until(lambda: _children(supervisor)[0] if _children(supervisor) else None, what="the job")
    proc.kill()
    proc.wait()
    wait_until(lambda: not _alive(job), what="the job to die with its server")
    wait_until(lambda: not _alive(supervisor), what="the supervisor to end")
    assert list(tmp_path.glob("record~*")) == []
