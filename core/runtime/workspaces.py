"""Where a runner's jobs work: one directory per run, removed once the run is over.

The jobs of a run share ``<work dir>/<run id>`` (``SHIPYARD_WORKSPACE``), so a later stage finds
what an earlier one left there when the same runner takes it. Once the run is over (succeeded,
failed or canceled: a run never starts again; a retry or a rollback is a new run) nothing needs
it, so the runner removes it: when it starts and every ``SWEEP_EVERY_S`` after, it asks the
server which of the runs it keeps workspaces for are over, and leaves alone any run it is still
running a job of. Dot-named entries (``.runners``: the runner's job records) and plain files are
not workspaces and stay.

The server's automated gate checks run in the same kind of folder under its own work directory:
the built-in runner sweeps them with its own; a server without one sweeps them itself
(``Orchestrator.sweep_workspaces``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path

from core.runtime.health import log_trouble

log = logging.getLogger(__name__)

#: how often a runner looks for workspaces of runs that are over
SWEEP_EVERY_S = 600.0
#: run ids asked about in one request
RUNS_PER_ASK = 200
#: the longest name a run id has (longer entries are not workspaces)
MAX_RUN_ID = 64

#: which of these runs are over (runs the server does not know count as over)
AskOver = Callable[[list[str]], Awaitable[set[str]]]


class Workspaces:
    def __init__(self, root: Path) -> None:
        self.root = root

    def of(self, run_id: str) -> Path:
        return self.root / run_id

    def kept(self) -> list[str]:
        """The runs that have a workspace here, by name."""
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        return sorted(
            e.name
            for e in entries
            if not e.name.startswith(".") and len(e.name) <= MAX_RUN_ID and e.is_dir(follow_symlinks=False)
        )

    async def sweep(self, ask_over: AskOver, busy: Callable[[], Collection[str]]) -> int:
        """Remove the workspaces of runs ``ask_over`` says are over, except those of runs in
        ``busy()`` (asked after the answer: a job of the run may still be ending); returns how
        many went."""
        kept = self.kept()
        removed = 0
        for start in range(0, len(kept), RUNS_PER_ASK):
            asked = kept[start : start + RUNS_PER_ASK]
            over = set(await ask_over(asked)) & set(asked)  # (only what was asked: never a path)
            for run_id in sorted(over - set(busy())):
                await asyncio.to_thread(shutil.rmtree, self.of(run_id), ignore_errors=True)
                removed += 1
        if removed:
            log.info("removed the workspaces of %d runs that are over from %s", removed, self.root)
        return removed

    async def sweep_every(
        self, every_s: float, ask_over: AskOver, busy: Callable[[], Collection[str]]
    ) -> None:
        """``sweep`` now and every ``every_s`` until cancelled; a sweep that fails is tried
        again the next time (quietly while the database is unreachable: that is logged once,
        by the database's health)."""
        while True:
            try:
                await self.sweep(ask_over, busy)
            except Exception as exc:
                log_trouble(log, exc, "could not remove the workspaces of ended runs from %s", self.root)
            await asyncio.sleep(every_s)
