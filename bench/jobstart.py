"""Job start benchmark: what starting one job costs, and a 3-stage run of ``true`` jobs end to end.

* **spawn to exec**: the job is ``date +%s%N``; from just before ``SubprocessExecutor.execute``
  to the clock the job read (after its exec and its own start-up, so an upper bound). One
  job at a time, the median of ``--jobs``.
* **round trip**: ``execute`` of ``true`` (as an argv, and through bash as pipelines run it)
  until its result is back: start, exit, the end recorded, output pipes drained.
* **3-stage run**: the real stack on SQLite (``bot.bootstrap.build``, as ``shipyard serve``)
  with the pipeline of ``bench.engine`` (3 stages x 2 ``true`` jobs); one run at a time, from
  just before the trigger to the run's own ``finished_at``; the median of ``--runs``. The same
  with the no-op executor gives the engine's own share.

    python -m bench.jobstart                     # --jobs 300 --runs 30

Targets (from the issue): job start overhead median <= 3 ms; the 3-stage run <= 20 ms.
It uses only ``SubprocessExecutor().execute`` and ``build``, so it also measures a checkout
from before the spawner (``PYTHONPATH=<that checkout> python <this file>``).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file against another checkout
    sys.path.append(str(Path(__file__).resolve().parent.parent))

from bench.engine import PIPELINE, _settings

TARGET_START_MS = 3.0
TARGET_RUN_MS = 20.0


def _job(command: str | tuple[str, ...], n: int) -> Any:
    from core.assignment import Assignment

    return Assignment(
        run_id="bench",
        job_id=f"bench.s0.j{n}",
        attempt=1,
        pipeline="bench",
        stage="s",
        name="j",
        command=command,
        env={},
        timeout_s=60,
    )


def _ms(values: list[float]) -> str:
    q = statistics.quantiles(values, n=10)
    return f"median {statistics.median(values):6.2f} ms  (p10 {q[0]:.2f}, p90 {q[-1]:.2f})"


async def job_start(jobs: int) -> dict[str, float]:
    from core.runtime.executor import SubprocessExecutor

    executor = SubprocessExecutor()
    starts: list[float] = []
    trips: dict[str, list[float]] = {"argv": [], "bash": []}
    with tempfile.TemporaryDirectory(prefix="shipyard-bench-jobstart-") as tmp:
        work = Path(tmp)
        for n in range(jobs + 10):  # (the first ones start the spawner and warm the caches)
            out: list[str] = []
            before = time.time_ns()
            date = _job(("date", "+%s%N"), n)
            result = await executor.execute(date, work, lambda _s, t, o=out: o.append(t))
            assert result.outcome == "succeeded", result
            if n >= 10:
                starts.append((int("".join(out)) - before) / 1e6)
        for kind, command in (("argv", ("true",)), ("bash", "true")):
            for n in range(jobs + 10):
                before_s = time.perf_counter()
                result = await executor.execute(_job(command, n), work, lambda _s, _t: None)
                assert result.outcome == "succeeded", result
                if n >= 10:
                    trips[kind].append((time.perf_counter() - before_s) * 1000)
    getattr(executor, "close", lambda: None)()
    print(f"spawn to exec (date +%s%N):   {_ms(starts)}")
    print(f"round trip, argv `true`:      {_ms(trips['argv'])}")
    print(f"round trip, bash -c true:     {_ms(trips['bash'])}")
    return {
        "start_ms": statistics.median(starts),
        "argv_ms": statistics.median(trips["argv"]),
        "bash_ms": statistics.median(trips["bash"]),
    }


async def three_stage(runs: int, executor_name: str) -> float:
    from bot.bootstrap import build
    from core.commands import TriggerRun
    from core.model import Actor
    from core.runtime.executor import NoopExecutor, SubprocessExecutor
    from storage.reads import Reads

    with tempfile.TemporaryDirectory(prefix="shipyard-bench-jobstart-") as tmp:
        work = Path(tmp)
        url = f"sqlite:///{work / 'bench.db'}"
        executor = NoopExecutor() if executor_name == "noop" else SubprocessExecutor()
        shipyard = build(_settings(url, work, PIPELINE, 2), executor=executor)
        await shipyard.start()
        reads = Reads(shipyard.store)
        took: list[float] = []
        try:
            for n in range(runs + 3):
                started = datetime.now(UTC)
                trigger = TriggerRun(pipeline="bench", actor=Actor("bench", "cli"))
                decision = await shipyard.orchestrator.handle(trigger)
                assert decision.state is not None, decision.reason
                run_id = decision.state.run.id
                while True:
                    state = await asyncio.to_thread(reads.run, run_id)
                    if state is not None and state.run.finished_at is not None:
                        break
                    await asyncio.sleep(0.002)
                assert state.run.status == "succeeded", state.run.status
                if n >= 3:
                    took.append((state.run.finished_at.replace(tzinfo=UTC) - started).total_seconds() * 1000)
        finally:
            await shipyard.stop()
            getattr(executor, "close", lambda: None)()
    label = "no-op executor" if executor_name == "noop" else "`true` jobs"
    print(f"3-stage run, {label + ':':16}  {_ms(took)}")
    return statistics.median(took)


async def main_async(args: argparse.Namespace) -> None:
    start = await job_start(args.jobs)
    e2e = await three_stage(args.runs, "subprocess")
    await three_stage(args.runs, "noop")
    verdict = "met" if start["start_ms"] <= TARGET_START_MS else "NOT met"
    print(f"\njob start overhead median {start['start_ms']:.2f} ms <= {TARGET_START_MS:.0f} ms: {verdict}")
    verdict = "met" if e2e <= TARGET_RUN_MS else "NOT met"
    print(f"3-stage run of `true` jobs median {e2e:.1f} ms <= {TARGET_RUN_MS:.0f} ms: {verdict}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.jobstart", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=300, help="jobs per start figure (default 300)")
    parser.add_argument("--runs", type=int, default=30, help="3-stage runs, one at a time (default 30)")
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
