"""The supervisor every job runs under: ``python -S -E supervise.py ARGV...``.

It leads the job's process group and starts the job with default signal dispositions. It gets
SIGHUP when the server dies (the executor sets ``PR_SET_PDEATHSIG``) and then kills the whole
group, so no part of a job, however deeply nested, outlives a crashed server and runs beside its
retry on another replica. SIGTERM (a graceful stop) is for the job's own processes; the supervisor
waits on. It exits as the job did: the same code, or death by the same signal.

Kept to ``os`` and ``signal`` so that it starts in a few milliseconds.
"""

from __future__ import annotations

import os
import signal
import sys

#: dispositions the job must start with, whatever this process inherited
DEFAULTS = (signal.SIGINT, signal.SIGQUIT, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGHUP)


def _kill_group(_signum: int, _frame: object) -> None:
    os.killpg(0, signal.SIGKILL)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGHUP, _kill_group)
    signal.signal(signal.SIGTERM, lambda _s, _f: None)  # a handler, not SIG_IGN: the job gets TERM
    if os.getppid() == 1:  # the server died before the handler was in place
        _kill_group(0, None)
    try:
        pid = os.posix_spawnp(argv[0], argv, os.environ, setsigdef=DEFAULTS)
    except OSError as exc:
        print(f"shipyard: cannot run {argv[0]!r}: {exc.strerror}", file=sys.stderr)
        return 127 if isinstance(exc, FileNotFoundError) else 126
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
