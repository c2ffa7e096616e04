"""The supervisor every job runs under: ``python -S -E supervise.py ARGV...``.

It leads the job's process group and starts the job with default signal dispositions. It gets
SIGHUP when the server dies (the executor sets ``PR_SET_PDEATHSIG``) and then kills the whole
group, so no part of a job, however deeply nested, outlives a crashed server and runs beside its
retry on another replica. SIGTERM (a graceful stop) is for the job's own processes; the supervisor
waits on. It exits as the job did: the same code, or death by the same signal.

It uses only built-in modules (``posix``, ``_signal``): importing ``os`` and ``signal`` would
double its start-up time, which every job pays.
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


def main(argv):
    _signal.signal(_signal.SIGHUP, _kill_group)
    _signal.signal(_signal.SIGTERM, lambda _s, _f: None)  # a handler, not SIG_IGN: the job gets TERM
    if posix.getppid() == 1:  # the server died before the handler was in place
        _kill_group(0, None)
    try:
        pid = posix.posix_spawnp(argv[0], argv, posix.environ, setsigdef=DEFAULTS)
    except OSError as exc:
        sys.stderr.write(f"shipyard: cannot run {argv[0]!r}: {exc.strerror}\n")
        return 127 if isinstance(exc, FileNotFoundError) else 126
    while True:
        try:
            _, status = posix.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    code = posix.waitstatus_to_exitcode(status)
    if code < 0:
        _signal.signal(-code, _signal.SIG_DFL)
        posix.kill(posix.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
