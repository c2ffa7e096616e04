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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from core.assignment import Assignment
from core.runtime.spawning import Spawned, Spawner, SpawnerGone, SpawnError, killpg
from core.runtime.waiting import within

OutputSink = Callable[[str, str], None]


@runtime_checkable
class PacedSink(Protocol):
    """An output sink that can make a job wait: while it is full, the job's pipes are not read,
    so a job writing faster than its output can be stored blocks on its own writes instead of
    the runner holding what it wrote (back-pressure)."""

    def __call__(self, stream: str, text: str) -> None: ...
    def is_full(self) -> bool: ...
    async def room(self) -> None:
        """Return once the sink takes output again."""
        ...


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
        """Run ``job``; when it exits (by itself, not killed), its outputs file is moved to
        ``<record>~<exit code>`` (``core/runtime/records.py``) before the result is returned."""
        ...

    def kill(self, job_id: str, attempt: int, grace_s: float = 0.0) -> bool: ...

    def close(self) -> None:
        """Release what the executor holds (its spawner); it may be used again after."""
        ...

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

    def close(self) -> None:
        pass

    def ended(self, outputs: Path, exit_code: int) -> ExecResult:
        return ExecResult("succeeded" if exit_code == 0 else "failed", exit_code)


#: what these exit codes mean (the spawner uses them too)
_EXIT_MEANING = {126: "command not executable", 127: "command not found"}


#: a command of plain words (no quotes, variables, globs, redirections, pipes, separators,
#: comments or tildes) means the same run directly as through a shell: like make, Shipyard then
#: starts it without one (a shell's start-up is most of a short job's cost)
_PLAIN = re.compile(r"[A-Za-z0-9_./:,@+=-]+(?:[ \t]+[A-Za-z0-9_./:,@+=-]+)*")
#: first words a shell acts on itself (keywords, and builtins with no program of their own or
#: one that differs): such a command still goes through the shell
_SHELL_WORDS = frozenset(
    """
    ! [[ ]] { } case coproc do done elif else esac fi for function if in select then time until while
    alias bg bind break builtin caller cd command compgen complete compopt continue declare dirs
    disown echo enable eval exec exit export fc fg getopts hash help history jobs kill let local
    logout mapfile popd printf pushd pwd read readarray readonly return set shift shopt source
    suspend test times trap type typeset ulimit umask unalias unset wait . :
    """.split()
)


def shell_argv(command: str | tuple[str, ...]) -> list[str]:
    """The job's command line: an argv as given; a string of plain words split into one; any
    other string through bash (or sh)."""
    if isinstance(command, tuple):
        return list(command)
    words = command.split()
    if _PLAIN.fullmatch(command.strip()) and "=" not in words[0] and words[0] not in _SHELL_WORDS:
        return words
    if shutil.which("bash"):
        return ["bash", "-eo", "pipefail", "-c", command]
    return ["sh", "-ec", command]


#: where a job's outputs file lives in its run's directory: ``<job id>.<attempt>.out``
META_DIR = ".shipyard"


def _meta(workdir: Path, job_id: str, attempt: int, kind: str) -> Path:
    return workdir / META_DIR / f"{job_id}.{attempt}.{kind}"


class SubprocessExecutor:
    """Jobs start through this executor's spawner (``core/runtime/spawner.py``), which records
    their ends and kills them all if the server dies."""

    def __init__(self, kill_grace_s: float = 5.0) -> None:
        self.kill_grace_s = kill_grace_s
        self.spawner = Spawner()
        self._procs: dict[tuple[str, int], Spawned] = {}
        #: attempts asked to stop while they had not exited: their result is "killed"
        self._killed: set[tuple[str, int]] = set()
        self._final_kill: dict[tuple[str, int], asyncio.TimerHandle] = {}

    def close(self) -> None:
        """End the spawner (a new one starts with the next job)."""
        self.spawner.close()

    def kill(self, job_id: str, attempt: int, grace_s: float = 0.0) -> bool:
        """Kill the attempt's whole process group: at once, or with SIGTERM first and SIGKILL
        after ``grace_s``. An attempt whose process is still starting never runs. An attempt
        whose process already exited keeps its result."""
        key = (job_id, attempt)
        proc = self._procs.get(key)
        if proc is not None and proc.exited.done():
            return True
        self._killed.add(key)
        if proc is None:
            return False
        if grace_s > 0:
            self.spawner.kill(proc, signal.SIGTERM)
            self._final_kill[key] = asyncio.get_running_loop().call_later(
                grace_s, self.spawner.kill, proc, signal.SIGKILL
            )
        else:
            self.spawner.kill(proc, signal.SIGKILL)
        return True

    async def execute(
        self, job: Assignment, workdir: Path, sink: OutputSink, record: Path | None = None
    ) -> ExecResult:
        workdir = workdir.absolute()  # (the spawner changes directory for every job)
        (workdir / META_DIR).mkdir(parents=True, exist_ok=True)
        output_file = _meta(workdir, job.job_id, job.attempt, "out")  # (the spawner creates it)
        env = {k: v for k, v in os.environ.items() if not k.startswith(PRIVATE_PREFIXES)}
        env.update(job.env)
        env["SHIPYARD_OUTPUT"] = str(output_file)
        env["SHIPYARD_WORKSPACE"] = str(workdir)
        env["PWD"] = str(workdir)  # (as a shell would say it, whether or not one starts the job)
        key = (job.job_id, job.attempt)
        if key in self._killed:
            self._killed.discard(key)
            return ExecResult("killed", None, detail="killed before it started")
        try:
            code, timed_out = await self._run(key, job, shell_argv(job.command), env, workdir, record, sink)
        except SpawnerGone as exc:
            self._killed.discard(key)
            sink("stderr", f"shipyard: {exc}\n")
            return ExecResult("failed", None, detail=str(exc))
        except SpawnError as exc:
            self._killed.discard(key)
            sink("stderr", f"shipyard: cannot start {job.command!r}: {exc}\n")
            return ExecResult("failed", 127, detail=f"cannot start: {exc}")
        if key in self._killed:
            self._killed.discard(key)
            return ExecResult("killed", code, detail="killed")
        if timed_out:
            return ExecResult("timed_out", code)
        if record is not None:  # (the spawner moved the outputs file there)
            output_file = record.with_name(f"{record.name}~{code}")
        return _exited_with(code, output_file, sink)

    async def _run(
        self,
        key: tuple[str, int],
        job: Assignment,
        argv: list[str],
        env: dict[str, str],
        workdir: Path,
        record: Path | None,
        sink: OutputSink,
    ) -> tuple[int, bool]:
        """Start the job, stream its output, enforce its timeout: ``(exit code, timed out)``."""
        loop = asyncio.get_running_loop()
        pumps = [_Pump(loop, "stdout", sink), _Pump(loop, "stderr", sink)]
        try:
            proc = await self.spawner.start(argv, env, workdir, record, pumps[0].write, pumps[1].write)
        except BaseException:
            for pump in pumps:
                pump.close()
            raise
        finally:
            for pump in pumps:
                os.close(pump.write)
        self._procs[key] = proc
        try:
            if key in self._killed:  # asked to stop while the process was starting
                self.spawner.kill(proc, signal.SIGKILL)
            await proc.pid
            exited, _ = await within(asyncio.shield(proc.exited), job.timeout_s)
            if not exited:
                await self._terminate(proc)
            code = await proc.exited
            await asyncio.gather(*(pump.done for pump in pumps))
        except asyncio.CancelledError:
            self.spawner.kill(proc, signal.SIGKILL)
            raise
        except SpawnerGone:
            killpg(proc.started(), signal.SIGKILL)
            raise
        finally:
            self._procs.pop(key, None)
            if (handle := self._final_kill.pop(key, None)) is not None:
                handle.cancel()
            for pump in pumps:
                pump.close()  # (nothing left to do at the pipe's end)
        return code, not exited

    def ended(self, outputs: Path, exit_code: int) -> ExecResult:
        return _exited_with(exit_code, outputs, lambda _stream, _text: None)

    async def _terminate(self, proc: Spawned) -> None:
        """SIGTERM the group, then SIGKILL whatever is left after the grace period."""
        self.spawner.kill(proc, signal.SIGTERM)
        ended, _ = await within(asyncio.shield(proc.exited), self.kill_grace_s)
        if not ended:
            self.spawner.kill(proc, signal.SIGKILL)


def _exited_with(code: int | None, output_file: Path, sink: OutputSink) -> ExecResult:
    """The result of a process that exited by itself with ``code``."""
    if code == 0:
        text = _read_text(output_file).replace("\x00", "\ufffd")
        outputs, problems = read_outputs(text.splitlines())
        for problem in problems:
            sink("stderr", f"shipyard: {problem}\n")
        return ExecResult("succeeded", 0, outputs)
    if code is not None and code < 0:
        detail = f"killed by {signal.Signals(-code).name}"
    else:
        detail = _EXIT_MEANING.get(code or 0, "")
    return ExecResult("failed", code, detail=detail)


def _read_text(path: Path) -> str:
    """A job's outputs file, or "" if it is gone. Raw reads: this is on every job's way out, and
    ``Path.read_text`` costs several times as much (a text wrapper over a buffered file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return ""
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode(errors="replace")


class _Pump:
    """One of a job's output pipes, read as it comes (a reader on the loop: nothing to await
    before the job starts) and decoded with split characters kept whole. A ``PacedSink`` that
    is full stops the reading until it has room."""

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str, sink: OutputSink) -> None:
        self.loop = loop
        self.name = name
        self.sink = sink
        self.paced = sink if isinstance(sink, PacedSink) else None
        self.read, self.write = os.pipe()
        os.set_blocking(self.read, False)
        self.done: asyncio.Future[None] = loop.create_future()
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._resuming: asyncio.Task[None] | None = None
        loop.add_reader(self.read, self._readable)

    def _readable(self) -> None:
        try:
            chunk = os.read(self.read, 65536)
        except BlockingIOError:
            return
        text = self.decoder.decode(chunk, final=not chunk)
        if text:
            self.sink(self.name, text.replace("\x00", "\ufffd"))  # NUL cannot be stored (PostgreSQL)
        if not chunk:
            self.close()
        elif self.paced is not None and self.paced.is_full():
            self.loop.remove_reader(self.read)
            self._resuming = self.loop.create_task(self._resume(self.paced))

    async def _resume(self, paced: PacedSink) -> None:
        await paced.room()
        if self.read >= 0:
            self.loop.add_reader(self.read, self._readable)

    def close(self) -> None:
        """Stop reading (at the pipe's end, or when the job is abandoned)."""
        if self._resuming is not None:
            self._resuming.cancel()
        if self.read >= 0:
            self.loop.remove_reader(self.read)
            os.close(self.read)
            self.read = -1
        if not self.done.done():
            self.done.set_result(None)


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
                killpg(pgid, signal.SIGKILL)
                killed.append(pgid)
    return killed
