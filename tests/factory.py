"""The one way tests build Shipyard: settings on a real database (with the pipeline files
written out), the service itself, the whole application served on loopback, and the environment
of a ``shipyard`` process (the CLI, the console, ``shipyard serve``)."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bot.app import create_app
from bot.bootstrap import Shipyard, build
from bot.config import Settings, load_settings

#: the repository, importable by a ``shipyard`` process started from anywhere
ROOT = Path(__file__).resolve().parents[1]

#: what the engine tests run with: a lease short enough that a lost runner shows within seconds
QUICK_LEASE: Mapping[str, Any] = {"lease_seconds": 3.0, "kill_grace_seconds": 1.0}


def write_pipelines(tmp_path: Path, pipelines: Mapping[str, str]) -> Path:
    """``tmp_path/pipelines`` holding each ``name → YAML`` as ``name.yml`` (dedented)."""
    pipes = tmp_path / "pipelines"
    pipes.mkdir(exist_ok=True)
    for name, text in pipelines.items():
        (pipes / f"{name}.yml").write_text(textwrap.dedent(text))
    return pipes


def make_settings(
    url: str, tmp_path: Path, pipelines: Mapping[str, str] | None = None, **overrides: Any
) -> Settings:
    """Settings for a test on the database at ``url``: ``pipelines`` written under ``tmp_path``,
    work directories there too, loops polling every 50 ms (``overrides`` add to or replace these)."""
    return load_settings(
        **{
            "database_url": url,
            "pipelines_dir": write_pipelines(tmp_path, pipelines or {}),
            "work_dir": tmp_path / "work",
            "poll_interval": 0.05,
            **overrides,
        }
    )


def make_shipyard(
    url: str,
    tmp_path: Path,
    pipelines: Mapping[str, str] | None = None,
    *,
    migrate: bool = True,
    with_runner: bool = True,
    **overrides: Any,
) -> Shipyard:
    """The service (engine, runner, stores) on ``make_settings``; not started."""
    return build(
        make_settings(url, tmp_path, pipelines, **overrides), migrate=migrate, with_runner=with_runner
    )


async def serve(settings: Settings) -> TestClient[web.Request, web.Application]:
    """``create_app(settings)`` served on loopback and started; close the client to stop it."""
    client: TestClient[web.Request, web.Application] = TestClient(
        TestServer(create_app(settings), host="127.0.0.1")
    )
    await client.start_server()
    return client


def cli_environment(**settings: object) -> dict[str, str]:
    """The environment of a ``shipyard`` process: this one's, less any ``SHIPYARD_``/``SLACK_``
    variable (so the machine's own configuration never leaks in), the repository importable, and
    ``settings`` as the ``SHIPYARD_<NAME>`` variables the process reads them from."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("SHIPYARD_", "SLACK_"))}
    return {
        **inherited,
        "PYTHONPATH": str(ROOT),
        **{f"SHIPYARD_{name.upper()}": str(value) for name, value in settings.items()},
    }
