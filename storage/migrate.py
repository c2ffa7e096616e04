"""Schema upgrades with Alembic, run at start-up so an upgrade never needs a manual step.

Migrations only ever add to what exists (or move data forward explicitly); a test checks that
the migrated schema equals the table definitions.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine

from storage.db import make_engine

MIGRATIONS = Path(__file__).parent / "migrations"
#: the PostgreSQL advisory lock replicas take to upgrade one at a time ("shipyard" in ASCII)
UPGRADE_LOCK = 0x73686970796172


def alembic_config(engine: Engine | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def upgrade(url: str, engine: Engine | None = None) -> None:
    """Bring the database at ``url`` to the newest schema."""
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
            command.upgrade(config, "head")
            conn.commit()
    finally:
        if own:
            engine.dispose()


def revision(url: str, message: str) -> None:
    """Autogenerate a migration from the difference between ``url`` and the tables (for developers)."""
    engine = make_engine(url, pool_size=1)
    with engine.connect() as conn:
        config = alembic_config(engine)
        config.attributes["connection"] = conn
        command.revision(config, message=message, autogenerate=True)
    engine.dispose()
