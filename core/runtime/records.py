"""Where a runner keeps how its jobs ended until the results are committed.

When a job exits, the runner's job spawner (``core/runtime/spawner.py``) moves the job's outputs file
to ``<work dir>/.runners/<runner>/<run id>~<job id>~<attempt>~<exit code>`` (a rename: whole
or not at all, and no new file to create); the runner reads the outputs from there and removes
the record once the result is reported. A runner that starts again under the same name reads
what is left: an attempt it still holds is reported as it ended, not run again; an attempt
declared lost meanwhile is reported late. The records are per runner, so replicas that share a
work directory never report each other's.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote


@dataclass(frozen=True, slots=True)
class Recorded:
    run_id: str
    job_id: str
    attempt: int
    exit_code: int
    #: the record: the job's outputs file, moved
    path: Path

    @property
    def outcome(self) -> Literal["succeeded", "failed"]:
        return "succeeded" if self.exit_code == 0 else "failed"


class JobRecords:
    def __init__(self, work_dir: Path, runner: str) -> None:
        self.dir = work_dir / ".runners" / quote(runner, safe="")
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, run_id: str, job_id: str, attempt: int) -> Path:
        """What the spawner names this attempt's record after (``~<exit code>`` added)."""
        return self.dir / f"{run_id}~{job_id}~{attempt}"

    def found(self) -> list[Recorded]:
        """Every attempt whose end is recorded and not yet forgotten."""
        found = []
        for record in self.dir.glob("*~*~*~*"):
            run_id, job_id, attempt, code = record.name.split("~")
            with contextlib.suppress(ValueError):
                found.append(Recorded(run_id, job_id, int(attempt), int(code), record))
        return found

    def forget(self, run_id: str, job_id: str, attempt: int, exit_code: int | None = None) -> None:
        """The attempt's result is committed (or no longer wanted): drop its record. With the exit
        code the runner saw, one unlink; otherwise (or if that name is not there) a scan by prefix
        (a glob compiled a pattern per job: a quarter of a busy runner's time)."""
        prefix = f"{run_id}~{job_id}~{attempt}~"
        if exit_code is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.dir / f"{prefix}{exit_code}")
                return
        with os.scandir(self.dir) as entries:
            ended = [entry.path for entry in entries if entry.name.startswith(prefix)]
        for record in ended:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(record)
