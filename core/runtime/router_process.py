"""What every router provider shares: ``RouterError``, and running a short command (``nginx -t``,
``nginx -s reload``, a command router) without blocking the event loop, killed at its timeout."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.runtime.executor import PRIVATE_PREFIXES

#: how much of a command's stderr a ``RouterError`` quotes
QUOTED_LINES = 5


class RouterError(Exception):
    """The router refused or could not be reached; ``message`` is in its own words (nginx -t's
    stderr, haproxy's answer, a command's exit and stderr, the refused connection)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class Finished:
    """A command that ran to its end."""

    code: int
    stdout: str
    stderr: str

    def last_lines(self, count: int = QUOTED_LINES) -> str:
        """The end of stderr (of stdout when stderr is empty), as one readable text."""
        lines = [line.rstrip() for line in (self.stderr or self.stdout).splitlines() if line.strip()]
        return "\n".join(lines[-count:])


def _killpg(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def run(
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Finished:
    """Run ``argv`` to its end; ``RouterError`` when it cannot start or outlives ``timeout``
    (then its whole process group is killed). Shipyard's own secrets are not passed on."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(PRIVATE_PREFIXES)}
    environment.update(env or {})
    if cwd is not None:
        cwd.mkdir(parents=True, exist_ok=True)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=environment,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        raise RouterError(f"cannot start {argv[0]!r}: {exc.strerror or exc}") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        _killpg(proc.pid)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 2.0)
        raise RouterError(f"{' '.join(argv)} timed out after {timeout:g}s (killed)") from None
    except asyncio.CancelledError:
        _killpg(proc.pid)
        raise
    code = proc.returncode if proc.returncode is not None else -1
    return Finished(code, out.decode(errors="replace"), err.decode(errors="replace"))


def describe_exit(argv: Sequence[str], finished: Finished) -> str:
    """``nginx -t exited with 1: <its last stderr lines>``."""
    code = finished.code
    how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
    said = finished.last_lines()
    return f"{' '.join(argv)} {how}" + (f": {said}" if said else "")
