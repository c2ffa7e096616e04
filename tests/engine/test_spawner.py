"""The job spawner: when its server dies, a job that has exited is recorded, one that runs is
killed, and nothing a job left in its process group outlives the server. Timeouts kill the
group; many jobs start at once; a spawner that dies takes no job with it unnoticed."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from core.assignment import Assignment
from core.runtime import spawning
from core.runtime.executor import SubprocessExecutor, shell_argv
from tests.e2e.server import wait_until

ROOT = Path(__file__).resolve().parents[2]

#: a stand-in for the server: runs one job through a SubprocessExecutor, prints its spawner's
#: pid, then waits (the test kills it)
SERVER = """
import asyncio, sys
from pathlib import Path
from core.assignment import Assignment
from core.runtime.executor import SubprocessExecutor, shell_argv

async def main() -> None:
    command, workdir, record = sys.argv[1:]
    executor = SubprocessExecutor()
    job = Assignment(run_id="r", job_id="r.s0.j0", attempt=1, pipeline="p", stage="s", name="j",
                     command=command, env={}, timeout_s=600)
    task = asyncio.create_task(executor.execute(job, Path(workdir), lambda _s, _t: None, Path(record)))
    while executor.spawner.pid is None:
        await asyncio.sleep(0.001)
    print(executor.spawner.pid, flush=True)
    await task
    await asyncio.sleep(120)

asyncio.run(main())
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
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def _group(pgid: int) -> list[int]:
    """Live processes of the process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


Start = Callable[[str], tuple[subprocess.Popen[str], int]]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Start]:
    """``start(command)`` runs a stand-in server with that job; returns it and its spawner's pid."""
    made: list[subprocess.Popen[str]] = []

    def start(command: str) -> tuple[subprocess.Popen[str], int]:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        argv = [sys.executable, "-c", SERVER, command, str(tmp_path / "work"), str(tmp_path / "record")]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
        made.append(proc)
        assert proc.stdout is not None
        return proc, int(proc.stdout.readline())

    yield start
    for proc in made:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def job(command: str | tuple[str, ...], job_id: str = "r.s0.j0", timeout: float = 30) -> Assignment:
    return Assignment(
        run_id="r",
        job_id=job_id,
        attempt=1,
        pipeline="p",
        stage="s",
        name="j",
        command=command,
        env={},
        timeout_s=timeout,
    )


def _job_of(spawner: int) -> int:
    return wait_until(lambda: (_children(spawner) or [None])[0], what="the job")


def test_a_job_running_when_its_server_is_killed_dies_with_all_it_started(tmp_path: Path, server) -> None:
    left = tmp_path / "left"
    proc, spawner = server(f"sleep 60 & echo $! > {left}; sleep 60")
    job_pid = _job_of(spawner)
    wait_until(lambda: left.exists() and left.read_text().strip(), what="the job's background process")
    background = int(left.read_text())
    assert _group(job_pid) == sorted([job_pid, background])

    proc.kill()
    proc.wait()

    wait_until(lambda: not _group(job_pid), what="every process of the job's group to die with its server")
    wait_until(lambda: not _alive(spawner), what="the spawner to end")
    assert not _alive(background)
    assert list(tmp_path.glob("record~*")) == []  # it did not end by itself: not recorded


def test_a_job_that_exited_while_the_spawner_was_stopped_is_recorded(tmp_path: Path, server) -> None:
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    left = tmp_path / "left"
    command = f"echo version=7 > $SHIPYARD_OUTPUT; sleep 60 & echo $! > {left}; read x < {fifo}; exit 5"
    proc, spawner = server(command)
    job_pid = _job_of(spawner)
    wait_until(lambda: left.exists() and left.read_text().strip(), what="the job's background process")
    background = int(left.read_text())

    os.kill(spawner, signal.SIGSTOP)  # the spawner is slow to notice the job's exit...
    try:
        with fifo.open("w") as go:
            go.write("now\n")
        wait_until(lambda: _state(job_pid) == "Z", what="the job to exit")
        proc.kill()  # ...and its server dies before the end is recorded
        proc.wait()
    finally:
        os.kill(spawner, signal.SIGCONT)

    wait_until(lambda: not _alive(spawner), what="the spawner to end")
    record = tmp_path / "record~5"
    assert record.read_text() == "version=7\n"  # the job's real exit code and outputs
    wait_until(lambda: not _alive(background), what="the job's background process to die with the server")


async def test_a_timeout_kills_the_jobs_whole_group(tmp_path: Path) -> None:
    left = tmp_path / "left"
    executor = SubprocessExecutor(kill_grace_s=0.2)
    try:
        result = await executor.execute(
            job(f"trap '' TERM; sleep 60 & echo $! > {left}; sleep 60", timeout=0.5),
            tmp_path,
            lambda _s, _t: None,
            tmp_path / "record",
        )
    finally:
        executor.close()
    assert result.outcome == "timed_out" and result.exit_code == -signal.SIGKILL
    background = int(left.read_text())
    wait_until(lambda: not _alive(background), what="the job's background process to be killed")
    assert list(tmp_path.glob("record~*")) == []  # killed, not ended by itself


async def test_many_jobs_start_at_once_and_each_gets_its_own_result(tmp_path: Path) -> None:
    executor = SubprocessExecutor()
    logs: dict[int, list[str]] = {i: [] for i in range(64)}
    try:
        results = await asyncio.gather(
            *(
                executor.execute(
                    job(f"echo n={i} > $SHIPYARD_OUTPUT; echo out {i}; exit $(({i} % 3))", f"r.s0.j{i}"),
                    tmp_path,
                    lambda _s, text, i=i: logs[i].append(text),  # type: ignore[misc]
                    tmp_path / f"record-{i}",
                )
                for i in range(64)
            )
        )
    finally:
        executor.close()
    for i, result in enumerate(results):
        assert result.exit_code == i % 3
        assert "".join(logs[i]) == f"out {i}\n"
        if i % 3 == 0:
            assert result.outcome == "succeeded" and result.outputs == {"n": str(i)}
        else:
            assert result.outcome == "failed"
        assert (tmp_path / f"record-{i}~{i % 3}").exists()


async def test_a_killed_spawner_fails_its_running_jobs_kills_them_and_is_replaced(tmp_path: Path) -> None:
    left = tmp_path / "left"
    executor = SubprocessExecutor()
    try:
        task = asyncio.create_task(
            executor.execute(job(f"sleep 60 & echo $! > {left}; sleep 60"), tmp_path, lambda _s, _t: None)
        )
        started = lambda: left.exists() and left.read_text().strip()  # noqa: E731
        await asyncio.to_thread(wait_until, started, what="the job")
        background = int(left.read_text())
        spawner = executor.spawner.pid
        assert spawner is not None
        os.kill(spawner, signal.SIGKILL)

        result = await asyncio.wait_for(task, 10)
        assert result.outcome == "failed" and "spawner died" in result.detail
        gone = lambda: not _alive(background)  # noqa: E731
        await asyncio.to_thread(wait_until, gone, what="the orphaned job to be killed")

        again = await executor.execute(job(("true",), job_id="r.s0.j1"), tmp_path, lambda _s, _t: None)
        assert again.outcome == "succeeded" and executor.spawner.pid not in (None, spawner)
    finally:
        executor.close()


async def test_a_command_that_cannot_run_fails_with_127_and_says_why(tmp_path: Path) -> None:
    out: list[str] = []
    executor = SubprocessExecutor()
    try:
        result = await executor.execute(
            job(("no-such-command-here",)), tmp_path, lambda _s, t: out.append(t), tmp_path / "record"
        )
    finally:
        executor.close()
    assert result.outcome == "failed" and result.exit_code == 127
    assert result.detail == "command not found"
    assert "cannot run 'no-such-command-here'" in "".join(out)
    assert (tmp_path / "record~127").exists()


async def test_a_job_starts_with_default_signal_dispositions_in_its_own_session(tmp_path: Path) -> None:
    out: list[str] = []
    executor = SubprocessExecutor()
    try:
        result = await executor.execute(
            job(("cat", "/proc/self/stat", "/proc/self/status")), tmp_path, lambda _s, t: out.append(t)
        )
    finally:
        executor.close()
    assert result.outcome == "succeeded"
    stat, *status = "".join(out).splitlines()
    pid, (_state, _ppid, pgrp, session) = int(stat.split()[0]), stat.rsplit(")", 1)[1].split()[:4]
    assert int(pgrp) == int(session) == pid  # it leads a session and process group of its own
    fields = dict(line.split(":", 1) for line in status if ":" in line)
    standard = (1 << 31) - 1  # signals 1-31 (the real-time ones are as this test was started)
    assert int(fields["SigIgn"], 16) & standard == 0 and int(fields["SigBlk"], 16) & standard == 0


async def test_a_job_with_more_environment_than_a_message_holds_starts_with_all_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request larger than the spawner's socket takes goes in a memory file: the job gets
    1.5 MB of environment, as exec allows, and jobs before and after start as ever. (The
    socket's buffer as on a machine with the kernel's default ``net.core.wmem_max``.)"""
    monkeypatch.setattr(spawning, "SEND_BUFFER", 212_992, raising=True)
    values = {f"BIG_{i}": chr(97 + i) * 100_000 for i in range(15)}  # (exec takes 128 KB a variable)
    count = 'env | grep -c "^BIG_"; printf %s "$BIG_14" | wc -c'
    big = replace(job(("sh", "-c", count), "r.s0.j1"), env=values)
    out: list[str] = []
    executor = SubprocessExecutor()
    try:
        before = await executor.execute(job(("true",), "r.s0.j0"), tmp_path, lambda _s, _t: None)
        sock = executor.spawner._sock
        assert sock is not None and sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < 1_000_000
        result = await executor.execute(big, tmp_path, lambda _s, t: out.append(t))
        after = await executor.execute(job(("true",), "r.s0.j2"), tmp_path, lambda _s, _t: None)
    finally:
        executor.close()
    assert (before.outcome, result.outcome, after.outcome) == ("succeeded",) * 3, out
    assert "".join(out).split() == ["15", "100000"]


async def test_a_job_with_more_environment_than_exec_takes_fails_saying_so(tmp_path: Path) -> None:
    values = {f"BIG_{i}": "x" * 100_000 for i in range(40)}  # 4 MB: beyond exec's limit
    out: list[str] = []
    executor = SubprocessExecutor()
    try:
        result = await executor.execute(
            replace(job(("true",)), env=values), tmp_path, lambda _s, t: out.append(t), tmp_path / "record"
        )
    finally:
        executor.close()
    assert result.outcome == "failed" and result.exit_code == 126
    assert "Argument list too long" in "".join(out)


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("true", ["true"]),
        ("./deploy.sh --env prod-eu", ["./deploy.sh", "--env", "prod-eu"]),
        ("make -C build all\n", ["make", "-C", "build", "all"]),
        ("echo $HOME", None),  # a variable
        ("ls *.py", None),  # a glob
        ("deploy > out.txt", None),  # a redirection
        ("true\nfalse", None),  # two commands
        ("cd build", None),  # a builtin
        ("exit 3", None),
        ("FOO=1 deploy", None),  # an assignment
        ("deploy 'a b'", None),  # quotes
        ("deploy ~/x", None),  # a tilde
    ],
)
def test_a_command_of_plain_words_starts_without_a_shell(command: str, argv: list[str] | None) -> None:
    assert shell_argv(command) == (argv or ["bash", "-eo", "pipefail", "-c", command])


async def test_plain_commands_scripts_without_a_shebang_and_shell_lines_all_run(tmp_path: Path) -> None:
    """What a job is told (its arguments, ``PWD``) is the same with or without a shell; a script
    with no ``#!`` line is run by ``sh`` (as execvp does); a missing program exits 127."""
    script = tmp_path / "bare.sh"
    script.write_text('echo "bare $1 in $PWD"\n')
    script.chmod(0o755)
    outs: dict[str, list[str]] = {}
    commands = {
        "plain": "./bare.sh one",
        "shell": "./bare.sh one | cat",
        "pwd": "printenv PWD",
        "missing": "no-such-program-here --flag",
    }
    executor = SubprocessExecutor()
    try:
        results = {
            name: await executor.execute(
                job(command, f"r.s0.{name}"),
                tmp_path,
                lambda _s, t, name=name: outs.setdefault(name, []).append(t),
            )
            for name, command in commands.items()
        }
    finally:
        executor.close()
    assert shell_argv(commands["plain"])[0] == "./bare.sh"  # (no shell asked for it)
    assert "".join(outs["plain"]) == "".join(outs["shell"]) == f"bare one in {tmp_path}\n"
    assert "".join(outs["pwd"]) == f"{tmp_path}\n"
    assert results["missing"].exit_code == 127 and results["missing"].detail == "command not found"
    assert "cannot run 'no-such-program-here'" in "".join(outs["missing"])
