"""Upgrading to one-deployment-per-environment while two runs deploy to one environment at once
(allowed before) says which runs are in the way, instead of failing on a bare constraint."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from storage.migrate import alembic_config, upgrade


def test_two_runs_deploying_to_one_environment_block_the_upgrade_with_their_names(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    try:
        config = alembic_config(engine)
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "0008")
        with engine.begin() as conn:
            columns = {c["name"] for c in sa.inspect(conn).get_columns("pipeline_version")}
            values = {c: "x" for c in columns} | {"id": "v1", "pipeline": "web", "version": 1}
            _insert(conn, "pipeline", {"name": "web", "archived": False, "created_at": "2026-11-27 00:00:00"})
            _insert(conn, "pipeline_version", values | {"created_at": "2026-11-27 00:00:00"})
            for number in (1, 2):
                run_id = f"r{number}"
                _insert(
                    conn,
                    "run",
                    {
                        "id": run_id,
                        "number": number,
                        "pipeline": "web",
                        "pipeline_version": 1,
                        "version_id": "v1",
                        "status": "running",
                        "parameters": "{}",
                        "triggered_by": "alice",
                        "trigger_channel": "cli",
                        "requested_by": "[]",
                        "warnings": "[]",
                        "reason": "",
                        "created_at": "2026-11-27 00:00:00",
                        "version": 0,
                    },
                )
                _insert(
                    conn,
                    "stage",
                    {
                        "id": f"{run_id}.s0",
                        "run_id": run_id,
                        "position": 0,
                        "name": "production",
                        "environment": "production",
                        "status": "running",
                        "reason": "",
                    },
                )
    finally:
        engine.dispose()
    with pytest.raises(RuntimeError, match=r"web#1 \(production\), web#2 \(production\)"):
        upgrade(url)


def _insert(conn: sa.Connection, table: str, values: dict[str, object]) -> None:
    columns = ", ".join(values)
    marks = ", ".join(f":{k}" for k in values)
    conn.execute(sa.text(f"INSERT INTO {table} ({columns}) VALUES ({marks})"), values)
