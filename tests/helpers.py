"""Small builders shared by tests: pipelines from YAML text, a service on a real database."""

from __future__ import annotations

import os
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

from core.definition import PipelineDef, parse_pipeline
from core.model import Actor

ALICE = Actor("alice", "cli")
BOB = Actor("bob", "slack")
CAROL = Actor("carol", "cli")
DAVE = Actor("dave", "cli")


def pipeline(text: str) -> PipelineDef:
    return parse_pipeline(textwrap.dedent(text))


class Clock:
    """A clock tests move by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process."""
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone, or exited while we looked
        return False


def written(path: Path) -> bool:
    """The file exists and its first line is complete (a shell may have created it but not yet written)."""
    return path.exists() and path.read_text().endswith("\n")
