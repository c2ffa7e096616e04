"""The engine depends on nothing outside it: no storage, no Slack, no web framework, no SQL."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

FORBIDDEN = (
    "bot",
    "storage",
    "sqlalchemy",
    "sqlmodel",
    "aiohttp",
    "slack_bolt",
    "slack_sdk",
    "apscheduler",
    "alembic",
    "psycopg",
)
CORE = sorted((Path(__file__).parent.parent / "core").glob("*.py"))


@pytest.mark.parametrize("module", CORE, ids=lambda p: p.name)
def test_core_imports_nothing_from_the_outer_layers(module: Path) -> None:
    tree = ast.parse(module.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported.intersection(FORBIDDEN), f"{module.name} imports {imported.intersection(FORBIDDEN)}"
    assert len(CORE) > 10
