"""The server's end of its job spawner (``core/runtime/spawner.py``, one process per executor).

The spawner is started on the first job and lives as long as the executor: ``close()`` ends it,
and so does the server's death (the kernel closes the server's end of the socket). It is a
child of the server in a session of its own, so a signal meant for the server's terminal or
process group does not reach it before the server has handed its jobs back.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import marshal
import os
import socket
import subprocess
import sys
import weakref
from pathlib import Path

#: the spawner's command line (``-S -E``: no site packages, no PYTHON* variables: it starts fast)
SPAWNER = [sys.executable, "-S", "-E", str(Path(__file__).with_name("spawner.py"))]
#: the socket's send buffer asked for (the kernel may give less: ``net.core.wmem_max``)
SEND_BUFFER = 1 << 22
#: a start request larger than this goes in a memory file passed with it, not in the message:
#: a message cannot exceed the socket's buffer (~400 KB here), and exec takes more (~2 MB)
INLINE = 1 << 16


class SpawnError(Exception):
    """The job could not be handed to the spawner."""


class SpawnerGone(SpawnError):
    """The spawner died (it was killed): the jobs it watched are reported failed."""


class Spawned:
    """One job started through the spawner."""

    __slots__ = ("exited", "id", "pid")

    def __init__(self, job_id: int, loop: asyncio.AbstractEventLoop) -> None:
        self.id = job_id
        #: the job's pid, which is also its process group's id
        self.pid: asyncio.Future[int] = loop.create_future()
        #: its exit code (negative: killed by that signal), once its end is recorded
        self.exited: asyncio.Future[int] = loop.create_future()

    def started(self) -> int:
        """The job's process group, once known and if there is one; else 0."""
        if self.pid.done() and not self.pid.cancelled() and self.pid.exception() is None:
            return self.pid.result()
        return 0


class Spawner:
    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._jobs: dict[int, Spawned] = {}
        self._next = 0
        self._buffer = bytearray(65536)
        self._finalizer: weakref.finalize[..., Spawner] | None = None

    @property
    def pid(self) -> int | None:
        """The spawner's own pid (None until the first job)."""
        return self._proc.pid if self._proc is not None else None

    def _connect(self) -> socket.socket:
        """The socket to a running spawner on this loop, starting one if need be."""
        loop = asyncio.get_running_loop()
        if self._sock is not None and self._loop is loop:
            return self._sock
        self.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with contextlib.suppress(OSError):
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        with theirs:
            self._proc = subprocess.Popen(SPAWNER, stdin=theirs.fileno(), start_new_session=True)
        ours.setblocking(False)
        loop.add_reader(ours.fileno(), self._readable)
        self._sock, self._loop = ours, loop
        self._finalizer = weakref.finalize(self, _end, ours, self._proc)
        return ours

    async def start(
        self, argv: list[str], env: dict[str, str], cwd: Path, record: Path | None, out: int, err: int
    ) -> Spawned:
        """Ask for the job to be started with ``out`` and ``err`` as its stdout and stderr (the
        caller closes its copies once this returns); await ``.pid`` for the started process."""
        sock = self._connect()
        self._next += 1
        job_id = self._next
        where = str(record.absolute()) if record is not None else ""
        request = marshal.dumps(("start", job_id, argv, env, str(cwd.absolute()), where))
        large = _memory_file(request) if len(request) > INLINE else None
        if large is not None:
            request = marshal.dumps(("start-large", job_id))
        passed = (out, err) if large is None else (out, err, large)
        fds = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", passed).tobytes())]
        spawned = Spawned(job_id, asyncio.get_running_loop())
        self._jobs[job_id] = spawned
        try:
            while True:
                try:
                    sock.sendmsg([request], fds)
                    return spawned
                except BlockingIOError:  # the spawner is behind: wait until it reads
                    await _writable(sock)
                except OSError as exc:
                    self._jobs.pop(job_id, None)
                    raise SpawnerGone(f"the job spawner is gone: {exc.strerror}") from exc
        finally:
            if large is not None:  # (the spawner holds its own copy once sent)
                os.close(large)

    def kill(self, spawned: Spawned, sig: int) -> None:
        """Signal the job's whole process group. Through the spawner, so that a job killed with
        SIGKILL is never recorded as if it had ended by itself; directly if it cannot be asked."""
        if spawned.exited.done():
            return
        try:
            if self._sock is None:
                raise ConnectionError
            self._sock.send(marshal.dumps(("kill", spawned.id, int(sig))))
        except OSError:
            killpg(spawned.started(), sig)

    def _readable(self) -> None:
        assert self._sock is not None
        while True:
            try:
                size = self._sock.recv_into(self._buffer)
            except BlockingIOError:
                return
            except OSError:
                size = 0
            if not size:
                self._gone()
                return
            kind, job_id, value = marshal.loads(memoryview(self._buffer)[:size])
            spawned = self._jobs.get(job_id)
            if spawned is None:
                continue
            if kind == "pid":
                spawned.pid.set_result(value)
            else:  # "exit"
                del self._jobs[job_id]
                spawned.exited.set_result(value)

    def _gone(self) -> None:
        """The spawner died: every job it watched fails (the caller kills what is left)."""
        jobs, self._jobs = self._jobs, {}
        self.close()
        for spawned in jobs.values():
            for future in (spawned.pid, spawned.exited):
                if not future.done():
                    future.set_exception(SpawnerGone("the job spawner died"))
                    future.exception()  # (retrieved: a job already cancelled awaits it no more)

    def close(self) -> None:
        """End the spawner: it kills the jobs still running (none, after a clean shutdown)."""
        if self._sock is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._sock.fileno())
        if self._finalizer is not None:
            self._finalizer()
        self._sock = self._loop = self._proc = self._finalizer = None


def _end(sock: socket.socket, proc: subprocess.Popen[bytes]) -> None:
    sock.close()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _memory_file(data: bytes) -> int:
    """A file in memory holding ``data``, to pass to the spawner with its request."""
    fd = os.memfd_create("shipyard-job", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        os.close(fd)
        raise
    return fd


async def _writable(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def writable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(sock.fileno(), writable)
    try:
        await ready
    finally:
        loop.remove_writer(sock.fileno())


def killpg(pgid: int, sig: int) -> None:
    """Signal a process group, if it is still there (never pgid 0: that is the caller's)."""
    if pgid <= 0:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
