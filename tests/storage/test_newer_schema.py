"""Going back a release (docs/operations.md): the older Shipyard meets the schema a newer one
migrated to, a revision its migrations do not have. It leaves that schema as it is and runs on
it, since migrations only add; it used to end every command, ``serve`` included, in Alembic's
"Can't locate revision" traceback."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from core.commands import TriggerRun
from core.runtime.service import Service
from storage.migrate import upgrade
from tests.factory import cli_environment
from tests.helpers import ALICE
from tests.pipelines import THREE_BY_TWO

NEWER = "0099_from_a_newer_release"


def _as_a_newer_release_left_it(url: str) -> None:
    """The newest schema, plus what a newer release added: a column, and its revision."""
    upgrade(url)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE run ADD COLUMN newer_feature VARCHAR(20) DEFAULT 'x'")
            conn.execute(sa.text("UPDATE alembic_version SET version_num = :v"), {"v": NEWER})
    finally:
        engine.dispose()


def _revision(url: str) -> str:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return str(conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar_one())
    finally:
        engine.dispose()


def test_an_older_release_leaves_a_newer_schema_alone_and_runs_on_it(
    db_url: str, make_service: Callable[..., Service]
) -> None:
    _as_a_newer_release_left_it(db_url)
    assert upgrade(db_url) == NEWER
    assert _revision(db_url) == NEWER
    svc = make_service(db_url, THREE_BY_TWO)
    started = svc.handle(TriggerRun(pipeline="three", actor=ALICE))
    assert started.accepted and started.state is not None


def test_shipyard_migrate_and_status_say_so_instead_of_a_traceback(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/shipyard.db"
    _as_a_newer_release_left_it(url)
    env = {**cli_environment(), "SHIPYARD_DATABASE_URL": url}
    said_by = {"migrate": f"the database schema is at {NEWER}, from a newer release", "status": ""}
    for command, said in said_by.items():
        result = subprocess.run(
            [sys.executable, "-m", "bot.cli", command],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert said in result.stdout and "Traceback" not in result.stderr
    assert _revision(url) == NEWER
