"""The supervisor every job runs under: ``python -S -E supervise.py SERVER_PID RECORD ARGV...``.

It leads the job's process group and starts the job with default signal dispositions. It asks
the kernel for SIGHUP when its parent, the server, dies (``PR_SET_PDEATHSIG``; if the server
was already gone by then, its parent is no longer ``SERVER_PID``) and then kills the whole
group, so no part of a job, however deeply nested, outlives a crashed server and runs beside its
retry on another replica. SIGTERM (a graceful stop) is for the job's own processes; the supervisor
waits on. It exits as the job did: the same code, or death by the same signal.

It uses only built-in modules (``posix``, ``_signal``) and ``_ctypes`` for ``prctl``: importing
``os`` and ``signal`` would double its start-up time, which every job pays. (The server could
set the death signal in a ``preexec_fn`` instead, but that forces a full ``fork()`` of the
server, blocking it for milliseconds per job.)
"""

import _signal
import posix
import sys

#: dispositions the job must start with, whatever this process inherited
DEFAULTS = (
    _signal.SIGINT,
    _signal.SIGQUIT,
    _signal.SIGPIPE,
    _signal.SIGXFSZ,
    _signal.SIGTERM,
    _signal.SIGHUP,
)


def _kill_group(_signum, _frame):
    posix.killpg(0, _signal.SIGKILL)


class _Job:
    """The job's process and whether the server died while it ran."""

    pid = 0
    #: the wait status, when the SIGHUP handler reaped the job
    status = None
    server_gone = False


def _server_died(_signum, _frame):
    """Kill the group, unless the job has already exited: then its end is recorded first (the
    server may die a moment after the job's last line, before this process got to record it)."""
    _Job.server_gone = True
    if not _Job.pid:
        _kill_group(0, None)
    try:
        pid, status = posix.waitpid(_Job.pid, posix.WNOHANG)
    except ChildProcessError:
        return  # (reaped already: main() records it, then kills what is left)
    if pid == 0:
        _kill_group(0, None)
    _Job.status = status


PR_SET_PDEATHSIG = 1


def _die_with(server_pid):
    """SIGHUP when the server dies; if it already has, act as if the signal came."""
    try:
        import _ctypes

        libc = _ctypes.dlopen(None)
        prctl = _ctypes.dlsym(libc, "prctl")
        _ctypes.call_function(prctl, (PR_SET_PDEATHSIG, _signal.SIGHUP))
    except Exception:
        pass
    if posix.getppid() != server_pid:
        _kill_group(0, None)


def _record(record, code):
    """Record that the job exited with ``code``: its outputs file (``$SHIPYARD_OUTPUT``) is
    moved to ``RECORD~<code>``. A rename is whole or not at all and creates no file (creating
    one costs more than half a millisecond on some disks). Not synced: the record is for the
    server's death, which leaves the page cache to the kernel; after the machine's, a job whose
    record is lost is run again (at least once)."""
    done = f"{record}~{code}"
    try:
        posix.rename(posix.environ[b"SHIPYARD_OUTPUT"], done)
    except (KeyError, OSError):  # (the job removed its outputs file: record an empty one)
        posix.close(posix.open(done, posix.O_WRONLY | posix.O_CREAT, 0o600))


def main(argv):
    server_pid, record, argv = int(argv[0]), argv[1], argv[2:]
    _signal.signal(_signal.SIGHUP, _server_died)
    _signal.signal(_signal.SIGTERM, lambda _s, _f: None)  # a handler, not SIG_IGN: the job gets TERM
    _die_with(server_pid)
    try:
        _Job.pid = posix.posix_spawnp(argv[0], argv, posix.environ, setsigdef=DEFAULTS)
    except OSError as exc:
        sys.stderr.write(f"shipyard: cannot run {argv[0]!r}: {exc.strerror}\n")
        return 127 if isinstance(exc, FileNotFoundError) else 126
    status = _Job.status
    while status is None:
        try:
            _, status = posix.waitpid(_Job.pid, 0)
        except ChildProcessError:  # (the SIGHUP handler reaped it)
            status = _Job.status
    code = posix.waitstatus_to_exitcode(status)
    try:
        if record:
            _record(record, code)
    except OSError as exc:
        sys.stderr.write(f"shipyard: cannot record the exit code in {record}: {exc.strerror}\n")
    if _Job.server_gone:
        _kill_group(0, None)  # (what the job left running in its group goes with its server)
    if code < 0:
        _signal.signal(-code, _signal.SIG_DFL)
        posix.kill(posix.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
