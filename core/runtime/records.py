"""Where a runner keeps how its jobs ended until the results are committed.

Each job's supervisor (``core/runtime/supervise.py``) writes the job's exit code to
``<work dir>/.runners/<runner>/<run id>/<job id>.<attempt>.exit`` (whole, synced, renamed into
place) before it exits; the runner removes the record once the result is reported. A runner
that starts again under the same name reads what is left: an attempt it still holds is
reported as it ended, not run again; an attempt declared lost meanwhile is reported late. The
records are per runner, so replicas that share a work directory never report each other's.
"""

from __future__ import annotations

import contextlib
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

    @property
    def outcome(self) -> Literal["succeeded", "failed"]:
        return "succeeded" if self.exit_code == 0 else "failed"


class JobRecords:
    def __init__(self, work_dir: Path, runner: str) -> None:
        self.dir = work_dir / ".runners" / quote(runner, safe="")

    def path(self, run_id: str, job_id: str, attempt: int) -> Path:
        """Where the supervisor of this attempt writes its end (the folder is made here)."""
        folder = self.dir / run_id
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{job_id}.{attempt}.exit"

    def found(self) -> list[Recorded]:
        """Every attempt whose end is recorded and not yet forgotten."""
        found = []
        for record in self.dir.glob("*/*.exit"):
            job_id, attempt, _ = record.name.rsplit(".", 2)
            try:
                code = int(record.read_text())
            except (OSError, ValueError):
                continue  # (never partial: a record is renamed into place once written)
            found.append(Recorded(record.parent.name, job_id, int(attempt), code))
        return found

    def forget(self, run_id: str, job_id: str, attempt: int) -> None:
        """The attempt's result is committed (or no longer wanted): drop its record."""
        with contextlib.suppress(FileNotFoundError):
            (self.dir / run_id / f"{job_id}.{attempt}.exit").unlink()
        with contextlib.suppress(OSError):
            (self.dir / run_id).rmdir()  # (only once it is empty)
