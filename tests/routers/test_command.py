"""The command router with a real subprocess: it gets the weights in its environment, what it
says it applied is the read-back, and its failures come back with its own stderr."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from core.routing import RouterDef
from core.runtime.routers import RouterError, router_for

#: a switch that only moves traffic in steps of 10, keeps its state in a file, and says what it runs
SWITCH = textwrap.dedent(
    """\
    import os, pathlib, sys
    state = pathlib.Path("state.txt")
    if os.environ.get("SHIPYARD_ROUTER_READ") == "1":
        print("reading the switch")
        print(state.read_text() if state.exists() else "nothing yet")
        sys.exit(0)
    given = os.environ["SHIPYARD_ROUTER_WEIGHTS"]
    pathlib.Path("seen.txt").write_text(
        f"{os.environ['SHIPYARD_ROUTER']} {given} {os.environ.get('SHIPYARD_DATABASE_URL', '-')}"
    )
    canary = round(int(dict(p.split("=") for p in given.split(","))["canary"]), -1)
    state.write_text(f"stable={100 - canary},canary={canary}")
    print("switched")
    print(state.read_text())
    """
)


def command_router(tmp_path: Path, source: str, **extra: object) -> RouterDef:
    script = tmp_path / "switch.py"
    script.write_text(source)
    return RouterDef.model_validate(
        {"command": [sys.executable, str(script)], "stable": ["web-1"], "canary": ["web-2"], **extra}
    )


async def test_the_command_gets_the_weights_and_its_read_back_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHIPYARD_DATABASE_URL", "postgresql://secret@db/shipyard")
    router = router_for("edge", command_router(tmp_path, SWITCH), workdir=tmp_path / "work")

    assert await router.apply({"stable": 75, "canary": 25}) == {"stable": 80, "canary": 20}
    # its name and the weights given, and none of Shipyard's own settings
    assert (tmp_path / "work" / "seen.txt").read_text() == "edge stable=75,canary=25 -"
    assert await router.read() == {"stable": 80, "canary": 20}


async def test_without_a_read_back_the_weights_given_are_taken(tmp_path: Path) -> None:
    router = router_for("edge", command_router(tmp_path, "print('done')"), workdir=tmp_path)
    assert await router.apply({"stable": 90, "canary": 10}) == {"stable": 90, "canary": 10}
    with pytest.raises(RouterError, match="the command router cannot read back its weights"):
        await router.read()


async def test_a_failing_command_is_an_error_with_its_stderr(tmp_path: Path) -> None:
    source = (
        "import sys\nprint('calling the load balancer')\n"
        "sys.stderr.write('lb api: 403 Forbidden\\n')\nsys.exit(3)\n"
    )
    router = router_for("edge", command_router(tmp_path, source), workdir=tmp_path)
    with pytest.raises(RouterError) as failed:
        await router.apply({"stable": 90, "canary": 10})
    assert failed.value.message.endswith("exited with 3: lb api: 403 Forbidden")


async def test_a_hanging_command_is_killed_at_its_timeout(tmp_path: Path) -> None:
    definition = command_router(tmp_path, "import time\ntime.sleep(30)\n", timeout="1s")
    with pytest.raises(RouterError, match=r"timed out after 1s \(killed\)"):
        await router_for("edge", definition, workdir=tmp_path).apply({"stable": 90, "canary": 10})


async def test_a_command_that_cannot_start_is_named(tmp_path: Path) -> None:
    definition = RouterDef.model_validate(
        {"command": [str(tmp_path / "nope.sh")], "blue": ["a"], "green": ["b"]}
    )
    with pytest.raises(RouterError, match=r"cannot start '.*nope\.sh': No such file or directory"):
        await router_for("edge", definition).apply({"blue": 0, "green": 100})
