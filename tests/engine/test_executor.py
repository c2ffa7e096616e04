"""The subprocess executor on its own: kills that race the start, outputs, argv commands."""

from __future__ import annotations

import asyncio
from pathlib import Path

from core.assignment import Assignment
from core.runtime.executor import SubprocessExecutor, read_outputs
from core.runtime.runner import LogBuffer


def job(command: str | tuple[str, ...], attempt: int = 1, timeout: float = 30) -> Assignment:
    return Assignment(
        run_id="r",
        job_id="r.s0.j0",
        attempt=attempt,
        pipeline="p",
        stage="s",
        name="j",
        command=command,
        env={},
        timeout_s=timeout,
    )


async def test_a_job_stopped_before_its_process_starts_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    executor = SubprocessExecutor()
    executor.kill("r.s0.j0", 1)
    result = await executor.execute(job(f"touch {marker}"), tmp_path, lambda _s, _t: None)
    assert result.outcome == "killed"
    assert not marker.exists()
    # the request was for attempt 1 only: a later attempt of the same job runs
    again = await executor.execute(job(f"touch {marker}", attempt=2), tmp_path, lambda _s, _t: None)
    assert again.outcome == "succeeded" and marker.exists()


async def test_a_kill_while_running_stops_the_process_group(tmp_path: Path) -> None:
    executor = SubprocessExecutor()
    task = asyncio.create_task(
        executor.execute(job("sleep 30 & sleep 30; wait"), tmp_path, lambda _s, _t: None)
    )
    await asyncio.sleep(0.2)
    assert executor.kill("r.s0.j0", 1)
    result = await asyncio.wait_for(task, 5)
    assert result.outcome == "killed"


async def test_argv_commands_take_arguments_literally(tmp_path: Path) -> None:
    out: list[str] = []
    result = await SubprocessExecutor().execute(
        job(("echo", "$HOME; rm -rf /")), tmp_path, lambda _s, t: out.append(t)
    )
    assert result.outcome == "succeeded"
    assert "".join(out) == "$HOME; rm -rf /\n"


def test_outputs_are_key_value_lines_and_bad_lines_are_reported() -> None:
    outputs, problems = read_outputs(["image=web:1", "", "# comment", "url=http://x?a=b", "not a pair"])
    assert outputs == {"image": "web:1", "url": "http://x?a=b"}
    assert problems == ["$SHIPYARD_OUTPUT line 5 ignored: expected key=value, got 'not a pair'"]


async def test_a_kill_reaches_children_left_running_after_the_shell_exited(tmp_path: Path) -> None:
    executor = SubprocessExecutor(kill_grace_s=0.5)
    started = asyncio.get_running_loop().time()
    result = await asyncio.wait_for(
        executor.execute(job("sleep 30 & echo started"), tmp_path, lambda _s, _t: None), 5
    )
    # the shell exited at once; the background sleep is ended with it instead of holding the job
    assert result.outcome == "succeeded"
    assert asyncio.get_running_loop().time() - started < 3


async def test_jobs_run_the_real_programs_with_default_signals(tmp_path: Path) -> None:
    out: list[str] = []
    executor = SubprocessExecutor()
    echo = await executor.execute(job(("echo", "a\\tb")), tmp_path, lambda _s, t: out.append(t))
    assert echo.outcome == "succeeded" and "".join(out) == "a\\tb\n"  # /bin/echo, not a shell builtin
    out.clear()
    script = "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    await executor.execute(job(("python3", "-c", script)), tmp_path, lambda _s, t: out.append(t))
    assert "".join(out) == "True\n"  # SIGINT reaches the job's programs


async def test_exit_codes_and_signals_are_reported_as_they_happened(tmp_path: Path) -> None:
    executor = SubprocessExecutor()
    exited = await executor.execute(job("exit 200"), tmp_path, lambda _s, _t: None)
    assert (exited.outcome, exited.exit_code, exited.detail) == ("failed", 200, "")
    signaled = await executor.execute(job("kill -TERM $$"), tmp_path, lambda _s, _t: None)
    assert (signaled.exit_code, signaled.detail) == (-15, "killed by SIGTERM")


async def test_a_job_stopped_gracefully_counts_as_stopped_even_if_it_exits_0(tmp_path: Path) -> None:
    executor = SubprocessExecutor()
    task = asyncio.create_task(
        executor.execute(job("trap 'exit 0' TERM; sleep 30 & wait"), tmp_path, lambda _s, _t: None)
    )
    await asyncio.sleep(0.3)
    assert executor.kill("r.s0.j0", 1, grace_s=5)
    result = await asyncio.wait_for(task, 5)
    assert result.outcome == "killed"  # half a deploy is not a success


async def test_nul_bytes_in_output_are_replaced(tmp_path: Path) -> None:
    out: list[str] = []
    await SubprocessExecutor().execute(job("printf 'a\\000b\\n'"), tmp_path, lambda _s, t: out.append(t))
    assert "".join(out) == "a\ufffdb\n"


async def test_a_job_writing_faster_than_its_output_is_stored_waits_for_it(tmp_path: Path) -> None:
    """Back-pressure: while the runner's buffer is full (its server slow or away), the job's pipes
    are not read and the job blocks on its own writes; the buffer never holds much more than its
    high-water mark, and once output is taken again every byte arrives."""
    size, high_water = 32 * 1024 * 1024, 1024 * 1024
    logs = LogBuffer(limit=2 * size, high_water=high_water)
    executor = SubprocessExecutor()
    command = f"head -c {size} /dev/zero | tr '\\0' x; echo; echo done"
    running = asyncio.create_task(executor.execute(job(command), tmp_path, logs))
    most = 0
    for _ in range(100):  # a second in which nobody stores anything
        await asyncio.sleep(0.01)
        most = max(most, logs.pending_bytes)
    assert not running.done()  # blocked on its writes
    assert logs.is_full() and most <= high_water + 2 * 65536  # (one read per pipe past the mark)

    taken = []
    while not running.done() or logs.pending:
        taken += logs.take()
        await asyncio.sleep(0.001)
    result = await running
    executor.close()
    text = "".join(t for _, t in taken)
    assert result.outcome == "succeeded"
    assert len(text) == size + len("\ndone\n") and text.endswith("x\ndone\n")
