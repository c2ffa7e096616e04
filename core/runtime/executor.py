"""Executors turn an ``Assignment`` into a finished process.

``SubprocessExecutor`` runs the command as a real child process in its own process group in the
run's working directory, streams its output, enforces the timeout by killing the whole group,
and reads the ``key=value`` lines the job wrote to ``$SHIPYARD_OUTPUT``. ``NoopExecutor``
succeeds at once; benchmarks use it to measure the engine alone.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import re
import shutil
import signal
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from core.assignment import Assignment
from core.runtime.waiting import within

OutputSink = Callable[[str, str], None]
#: environment variables of the server that jobs must not inherit
PRIVATE_PREFIXES = ("SHIPYARD_", "SLACK_")
OUTPUT_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


@dataclass(frozen=True, slots=True)
class ExecResult:
    outcome: Literal["succeeded", "failed", "timed_out", "killed"]
    exit_code: int | None
    outputs: dict[str, str] = field(default_factory=dict)
    detail: str = ""


class Executor(Protocol):
    async def execute(
        self, job: Assignment, workdir: Path, sink: OutputSink, record: Path | None = None
    ) -> ExecResult:
        """Run ``job``; when it exits, its supervisor moves its outputs file to
        ``<record>~<exit code>`` (``core/runtime/records.py``)."""
        ...

    def kill(self, job_id: str, attempt: int, grace_s: float = 0.0) -> bool: ...

    def ended(self, outputs: Path, exit_code: int) -> ExecResult:
        """The result of an attempt that exited with ``exit_code``, its outputs file at
        ``outputs`` (read after a restart)."""
        ...


class NoopExecutor:
    """Succeeds immediately without starting a process."""

    async def execute(
        self, job: Assignment, workdir: Path, sink: OutputSink, record: Path | None = None
    ) -> ExecResult:
        return ExecResult("succeeded", 0)

    def kill(self, job_id: str, attempt: int, grace_s: float = 0.0) -> bool:
        return False

    def ended(self, outputs: Path, exit_code: int) -> ExecResult:
        return ExecResult("succeeded" if exit_code == 0 else "failed", exit_code)


#: every job runs under this supervisor (see core/runtime/supervise.py)
SUPERVISOR = [sys.executable, "-S", "-E", str(Path(__file__).with_name("supervise.py"))]


#: what these exit codes mean (the supervisor uses them too)
_EXIT_MEANING = {126: "command not executable", 127: "command not found"}


def shell_argv(command: str | tuple[str, ...], record: Path | None = None) -> list[str]:
    """The supervisor's command line: it records the job's end beside ``record`` (if any)."""
    if isinstance(command, tuple):
        argv = list(command)
    elif shutil.which("bash"):
        argv = ["bash", "-eo", "pipefail", "-c", command]
    else:
        argv = ["sh", "-ec", command]
    return [*SUPERVISOR, str(os.getpid()), str(record or ""), *argv]


#: where a job's outputs file lives in its run's directory: ``<job id>.<attempt>.out``
META_DIR = ".shipyard"


def _meta(workdir: Path, job_id: str, attempt: int, kind: str) -> Path:
    return workdir / META_DIR / f"{job_id}.{attempt}.{kind}"


class SubprocessExecutor:
    def __init__(self, kill_grace_s: float = 5.0) -> None:
        self.kill_grace_s = kill_grace_s
        self._procs: dict[tuple[str, int], asyncio.subprocess.Process] = {}
        #: attempts asked to stop while they had not exited: their result is "killed"
        self._killed: set[tuple[str, int]] = set()
        #: attempts whose process has exited (a kill now only sweeps up what it left behind)
        self._exited: set[tuple[str, int]] = set()
        self._final_kill: dict[tuple[str, int], asyncio.TimerHandle] = {}

    def kill(self, job_id: str, attempt: int, grace_s: float = 0.0) -> bool:
        """Kill the attempt's whole process group: at once, or with SIGTERM first and SIGKILL
        after ``grace_s``. An attempt whose process is still starting never starts. An attempt
        whose process already exited keeps its result; only what it left running is killed."""
        key = (job_id, attempt)
        proc = self._procs.get(key)
        if key not in self._exited:
            self._killed.add(key)
        if proc is None:
            return False
        if grace_s > 0 and key not in self._exited:
            _killpg(proc.pid, signal.SIGTERM)
            self._final_kill[key] = asyncio.get_running_loop().call_later(
                grace_s, _killpg, proc.pid, signal.SIGKILL
            )
        else:
            _killpg(proc.pid, signal.SIGKILL)
        return True

    async def execute(
        self, job: Assignment, workdir: Path, sink: OutputSink, record: Path | None = None
    ) -> ExecResult:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / META_DIR).mkdir(exist_ok=True)
        output_file = _meta(workdir, job.job_id, job.attempt, "out")
        output_file.write_text("")
        env = {k: v for k, v in os.environ.items() if not k.startswith(PRIVATE_PREFIXES)}
        env.update(job.env)
        env["SHIPYARD_OUTPUT"] = str(output_file)
        env["SHIPYARD_WORKSPACE"] = str(workdir)
        key = (job.job_id, job.attempt)
        if key in self._killed:
            self._killed.discard(key)
            return ExecResult("killed", None, detail="killed before it started")
        try:
            proc = await asyncio.create_subprocess_exec(
                *shell_argv(job.command, record),
                cwd=workdir,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                # no preexec_fn: it would force a full fork() of this process, ~10 ms of a
                # blocked event loop per job; the supervisor arranges its own death signal
                start_new_session=True,
            )
        except OSError as exc:
            sink("stderr", f"shipyard: cannot start {job.command!r}: {exc}\n")
            return ExecResult("failed", 127, detail=f"cannot start: {exc.strerror}")
        self._procs[key] = proc
        if key in self._killed:  # asked to stop while the process was starting
            _killpg(proc.pid, signal.SIGKILL)
        assert proc.stdout is not None and proc.stderr is not None
        pumps = [
            asyncio.create_task(_pump(proc.stdout, "stdout", sink)),
            asyncio.create_task(_pump(proc.stderr, "stderr", sink)),
        ]
        timed_out = False
        try:
            exited, _ = await within(_exited(proc), job.timeout_s)
            if not exited:
                timed_out = True
                await self._terminate(proc)
            self._exited.add(key)
            # background processes the job left behind would hold its output open: end them
            _killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            await asyncio.gather(*pumps)
        except asyncio.CancelledError:
            _killpg(proc.pid, signal.SIGKILL)
            raise
        finally:
            self._procs.pop(key, None)
            self._exited.discard(key)
            if (handle := self._final_kill.pop(key, None)) is not None:
                handle.cancel()
        code = proc.returncode
        if key in self._killed:
            self._killed.discard(key)
            return ExecResult("killed", code, detail="killed")
        if timed_out:
            return ExecResult("timed_out", code)
        if record is not None:  # (the supervisor moved the outputs file there)
            output_file = record.with_name(f"{record.name}~{code}")
        return _exited_with(code, output_file, sink)

    def ended(self, outputs: Path, exit_code: int) -> ExecResult:
        return _exited_with(exit_code, outputs, lambda _stream, _text: None)

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM the group, then SIGKILL whatever is left after the grace period."""
        _killpg(proc.pid, signal.SIGTERM)
        await within(proc.wait(), self.kill_grace_s)
        _killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


def _exited_with(code: int | None, output_file: Path, sink: OutputSink) -> ExecResult:
    """The result of a process that exited by itself with ``code``."""
    if code == 0:
        try:
            text = output_file.read_text(errors="replace").replace("\x00", "\ufffd")
        except FileNotFoundError:
            text = ""
        outputs, problems = read_outputs(text.splitlines())
        for problem in problems:
            sink("stderr", f"shipyard: {problem}\n")
        return ExecResult("succeeded", 0, outputs)
    if code is not None and code < 0:
        detail = f"killed by {signal.Signals(-code).name}"
    else:
        detail = _EXIT_MEANING.get(code or 0, "")
    return ExecResult("failed", code, detail=detail)


async def _exited(proc: asyncio.subprocess.Process) -> None:
    """Return when the process itself exits. ``Process.wait()`` also waits for its output pipes
    to close, which a background child can hold open for as long as it likes."""
    loop = asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(proc.pid)
    except (ProcessLookupError, AttributeError, OSError):  # gone already, or no pidfd here
        if proc.returncode is None:
            await proc.wait()
        return
    exited: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await exited
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _pump(stream: asyncio.StreamReader, name: str, sink: OutputSink) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # keeps split characters whole
    while True:
        chunk = await stream.read(65536)
        text = decoder.decode(chunk, final=not chunk)
        if text:
            sink(name, text.replace("\x00", "\ufffd"))  # NUL cannot be stored (PostgreSQL text)
        if not chunk:
            return


def read_outputs(lines: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """Parse ``key=value`` lines; blank lines and ``#`` comments are ignored."""
    outputs: dict[str, str] = {}
    problems = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = OUTPUT_LINE.match(line)
        if match is None:
            problems.append(f"$SHIPYARD_OUTPUT line {number} ignored: expected key=value, got {line[:80]!r}")
        else:
            outputs[match.group(1)] = match.group(2)
    return outputs, problems


def kill_orphans(job_ids: Iterable[str]) -> list[int]:
    """Kill process groups left behind by a previous life of this server, found by the
    ``SHIPYARD_JOB_ID`` in their environment. Returns the groups killed."""
    wanted = {f"SHIPYARD_JOB_ID={j}".encode() for j in job_ids}
    if not wanted:
        return []
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted.intersection(environ):
            pid = int(entry.name)
            with contextlib.suppress(OSError):
                pgid = os.getpgid(pid)
                _killpg(pgid, signal.SIGKILL)
                killed.append(pgid)
    return killed
