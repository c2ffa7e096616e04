"""Schema upgrades with Alembic, run at start-up so an upgrade never needs a manual step.

Migrations only ever add to what exists (or move data forward explicitly); a test checks that
the migrated schema equals the table definitions.
"""

from __future__ import annotations

import logging
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from storage.db import make_engine

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"
#: the PostgreSQL advisory lock replicas take to upgrade one at a time ("shipyard" in ASCII)
UPGRADE_LOCK = 0x73686970796172


def alembic_config(engine: Engine | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def upgrade(url: str, engine: Engine | None = None) -> str | None:
    """Bring the database at ``url`` to the newest schema. A newer release's schema is left as
    it is and its revision returned: migrations only add, so this release runs on it (going
    back a release, docs/operations.md)."""
    own = engine is None
    engine = engine or make_engine(url, pool_size=1)
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                # replicas started together upgrade one after the other: the next finds the
                # schema at head and does nothing (held until this transaction commits)
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": UPGRADE_LOCK})
            config = alembic_config(engine)
            config.attributes["connection"] = conn
            if newer := _newer_revision(conn, config):
                log.warning("the schema is at %s, from a newer release: left as it is", newer)
                return newer
            command.upgrade(config, "head")
            conn.commit()
            return None
    finally:
        if own:
            engine.dispose()


def _newer_revision(conn: sa.Connection, config: Config) -> str | None:
    """The database's revision if these migrations do not have it (a newer release made it)."""
    known = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}
    return next((r for r in MigrationContext.configure(conn).get_current_heads() if r not in known), None)


def revision(url: str, message: str) -> None:
    """Autogenerate a migration from the difference between ``url`` and the tables (for developers)."""
    engine = make_engine(url, pool_size=1)
    with engine.connect() as conn:
        config = alembic_config(engine)
        config.attributes["connection"] = conn
        command.revision(config, message=message, autogenerate=True)
    engine.dispose()
