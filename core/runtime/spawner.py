"""The job spawner: one long-lived process per runner that starts its jobs and watches them.

``python -S -E spawner.py`` with a ``SOCK_SEQPACKET`` socket to the server as its stdin. Starting
a Python supervisor per job cost ~17 ms; a ``posix_spawn`` from here costs a fraction of one.

Requests (``marshal``-encoded tuples), answered in order of events:

* ``("start", id, argv, env, cwd, record)`` with the job's stdout and stderr pipes attached
  (``SCM_RIGHTS``). Its outputs file (``$SHIPYARD_OUTPUT`` in ``env``) is created empty. The job
  is started (``posix_spawn``) in a session (and process group) of
  its own, with default signal dispositions, stdin on ``/dev/null``. Answer ``("pid", id,
  pid)``; a command that cannot be executed is answered ``("pid", id, 0)`` and ends at once
  with 127 (not found) or 126, said on its stderr.
* ``("start-large", id)``: the same, for a request larger than a message may be: the ``start``
  request is in a memory file passed as a third descriptor.
* ``("kill", id, signal)``: signal the job's whole group. A job killed with SIGKILL is not
  recorded: it did not end by itself.

When a job exits: its end is recorded (its outputs file, ``$SHIPYARD_OUTPUT``, moved to
``<record>~<exit code>``; see ``core/runtime/records.py``), what it left in its group is killed
(it would hold the output pipes open), and ``("exit", id, code)`` is sent; ``code`` is negative
for death by a signal.

The guarantee: no part of a job outlives the server. When the server's end of the socket closes
(the server exited or died: the kernel closes it), every job that has exited is recorded, then
every job group this process started is killed, then it exits. A job that exited just before its
server died is thus recorded, not lost. The spawner ignores SIGTERM, SIGINT and SIGHUP (a stop
of the whole service signals every process): it goes when its server does.
"""

from __future__ import annotations

import errno
import marshal
import os
import selectors
import signal
import socket
import sys
from typing import Any

#: dispositions a job must start with: an ignored signal stays ignored across exec
DEFAULTS = (
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGPIPE,
    signal.SIGXFSZ,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGCHLD,
)
#: the largest message (a larger request comes in a memory file: ``start-large``)
MAX_REQUEST = 1 << 17


class Job:
    """A job process this spawner started and has not yet reaped."""

    __slots__ = ("id", "killed", "outputs", "pid", "record")

    def __init__(self, job_id: int, pid: int, record: str, outputs: str | None) -> None:
        self.id = job_id
        self.pid = pid
        self.record = record
        self.outputs = outputs
        #: SIGKILLed on request: its end is not recorded
        self.killed = False


def _spawn(argv: list[str], env: dict[str, str], cwd: str, out: int, err: int) -> int:
    """Start the job (``posix_spawn``: no copy of this process is made) in ``cwd``, found on
    the job's own ``PATH``."""
    path = env.get("PATH")
    if path != os.environ.get("PATH"):
        if path is None:
            del os.environ["PATH"]
        else:
            os.environ["PATH"] = path
    os.chdir(cwd)  # (the job starts where this process is; nothing here uses relative paths)
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, out, 1),
        (os.POSIX_SPAWN_DUP2, err, 2),
    ]
    try:
        return os.posix_spawnp(
            argv[0], argv, env, file_actions=actions, setsid=True, setsigdef=DEFAULTS, setsigmask=()
        )
    except OSError as exc:  # a script with no #! line: run by sh, as execvp and shells do
        if exc.errno != errno.ENOEXEC:
            raise
        script = argv[0] if "/" in argv[0] else _found(argv[0], path or "")
        return os.posix_spawn(
            "/bin/sh", ["sh", script, *argv[1:]], env, file_actions=actions, setsid=True, setsigdef=DEFAULTS,
            setsigmask=(),
        )  # fmt: skip


def _found(name: str, path: str) -> str:
    """Where ``name`` is on ``path``, as ``posix_spawnp`` found it."""
    for folder in path.split(os.pathsep):
        candidate = os.path.join(folder or ".", name)
        if os.access(candidate, os.X_OK) and os.path.isfile(candidate):
            return candidate
    return name


def record_end(job: Job, code: int) -> None:
    """Record that ``job`` exited with ``code``: a rename, whole or not at all, creating no file.
    Not synced: the record is for the server's death, not the machine's."""
    if not job.record or job.killed:
        return
    done = f"{job.record}~{code}"
    try:
        if job.outputs is None:
            raise FileNotFoundError
        os.rename(job.outputs, done)
    except OSError:  # (the job removed its outputs file: record an empty one)
        try:
            os.close(os.open(done, os.O_WRONLY | os.O_CREAT, 0o600))
        except OSError as exc:
            sys.stderr.write(f"shipyard spawner: cannot record the end of a job in {done}: {exc}\n")


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Spawner:
    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.jobs: dict[int, Job] = {}  # by pid
        self.by_id: dict[int, Job] = {}
        #: one buffer for every request (a fresh one per read would be allocated and freed)
        self.buffer = bytearray(MAX_REQUEST)

    def send(self, message: tuple[Any, ...]) -> None:
        try:
            self.conn.send(marshal.dumps(message))
        except OSError:  # (the server is gone: the socket's end says so next)
            pass

    def start(self, request: tuple[Any, ...], fds: list[int]) -> None:
        _, job_id, argv, env, cwd, record = request
        out, err = fds
        job = Job(job_id, 0, record, env.get("SHIPYARD_OUTPUT"))
        try:
            if job.outputs:  # (here, not in the server: creating a file can take a millisecond)
                os.close(os.open(job.outputs, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666))
            job.pid = _spawn(argv, env, cwd, out, err)
        except OSError as exc:  # as a shell says it: the job "exits" 127 or 126
            try:
                os.write(err, f"shipyard: cannot run {argv[0]!r}: {exc.strerror}\n".encode())
            except OSError:
                pass
            code = 127 if isinstance(exc, FileNotFoundError) else 126
            self.send(("pid", job_id, 0))
            record_end(job, code)
            self.send(("exit", job_id, code))
            return
        finally:
            os.close(out)
            os.close(err)
        self.jobs[job.pid] = job
        self.by_id[job_id] = job
        self.send(("pid", job_id, job.pid))

    def kill(self, job_id: int, sig: int) -> None:
        job = self.by_id.get(job_id)
        if job is None:  # (exited already: its group was swept then)
            return
        if sig == signal.SIGKILL:
            job.killed = True
        _killpg(job.pid, sig)

    def ended(self, job: Job, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        del self.jobs[job.pid]
        del self.by_id[job.id]
        record_end(job, code)
        _killpg(job.pid, signal.SIGKILL)  # (what the job left running in its group)
        self.send(("exit", job.id, code))

    def reap(self) -> None:
        while self.jobs:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            job = self.jobs.get(pid)
            if job is not None:
                self.ended(job, status)

    def server_gone(self) -> None:
        """Record every job that has exited, then kill every group this spawner started."""
        self.reap()
        for job in list(self.jobs.values()):
            job.killed = True
            _killpg(job.pid, signal.SIGKILL)
        self.jobs.clear()

    def receive(self) -> bool:
        """Handle the requests waiting on the socket; False when the server has gone."""
        while True:
            try:
                size, ancdata, flags, _addr = self.conn.recvmsg_into(
                    [self.buffer], socket.CMSG_SPACE(3 * 4), socket.MSG_CMSG_CLOEXEC | socket.MSG_DONTWAIT
                )
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not size:
                return False
            fds: list[int] = []
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.extend(memoryview(payload).cast("i"))
            request = marshal.loads(memoryview(self.buffer)[:size])
            if request[0] == "start-large" and len(fds) == 3:
                request = _read_whole(fds.pop())
            if request[0] == "start" and len(fds) == 2 and not flags & socket.MSG_TRUNC:
                self.start(request, fds)
            elif request[0] == "kill":
                self.kill(request[1], request[2])
            else:
                for fd in fds:
                    os.close(fd)


def _read_whole(fd: int) -> tuple[Any, ...]:
    """The request held in the memory file ``fd`` (closed here)."""
    try:
        size = os.fstat(fd).st_size
        data = bytearray()
        while len(data) < size:
            chunk = os.pread(fd, size - len(data), len(data))
            if not chunk:
                break
            data += chunk
        request: tuple[Any, ...] = marshal.loads(data)
        return request
    finally:
        os.close(fd)


def main() -> int:
    conn = socket.socket(fileno=os.dup(0))
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # (stdin was the socket; the server's end must close with the server alone)
    os.close(null)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
    spawner = Spawner(conn)
    selector = selectors.DefaultSelector()
    selector.register(conn, selectors.EVENT_READ, "server")
    selector.register(wake_r, selectors.EVENT_READ, "child")
    while True:
        for key, _ in selector.select():
            if key.data == "child":
                os.read(wake_r, 4096)
                spawner.reap()
            elif not spawner.receive():
                spawner.server_gone()
                return 0
        spawner.reap()  # (a SIGCHLD that came between select and its handler)


if __name__ == "__main__":
    sys.exit(main())
