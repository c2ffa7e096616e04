"""A stand-in for ``core.runtime.measure`` that measures command checks only, with real
subprocesses: what the analysis tests measure with until the real one is merged."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from core.checks import CheckDef, CheckResult, Measurement


class Probe:
    """A command check's stand-in for ``core.runtime.measure``: runs the argv in ``workdir``
    (exit 0 passes, 2 is inconclusive, others fail; the last output line is the value) and
    counts what it measured."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def __call__(
        self,
        name: str,
        check: CheckDef,
        *,
        now: datetime,
        workdir: Path,
        env: Mapping[str, str] | None = None,
        session: Any = None,
    ) -> Measurement:
        self.calls.append(name)
        assert check.command is not None
        proc = await asyncio.create_subprocess_exec(
            *check.command, cwd=workdir, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, _ = await asyncio.wait_for(proc.communicate(), check.timeout)
        code = proc.returncode
        lines = out.decode().strip().splitlines()
        result = {0: CheckResult.PASSED, 2: CheckResult.INCONCLUSIVE}.get(code or 0, CheckResult.FAILED)
        return Measurement(name, now, result, lines[-1] if lines else None, f"{name}: exit {code}")
