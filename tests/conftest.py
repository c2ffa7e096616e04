"""Shared fixtures: real databases, fresh for every test.

SQLite: one database file is migrated per session and copied for each test. PostgreSQL: one
template database is migrated per session and each test gets ``CREATE DATABASE … TEMPLATE``
(procrastinate's habit). PostgreSQL comes from ``SHIPYARD_TEST_POSTGRES_URL`` (default: the local
server); when it is not reachable, its tests are skipped with a message, unless
``SHIPYARD_REQUIRE_POSTGRES=1`` (CI), which turns that into a failure.
"""

from __future__ import annotations

import os
import shutil
import textwrap
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from core.definition import parse_pipeline
from core.runtime.service import Service
from storage.migrate import upgrade
from storage.store import SqlStore
from tests.checks.services import WebService
from tests.outage import Outage
from tests.prometheus import Prometheus
from tests.routing import Haproxy, Nginx, Versions
from tests.tcp_proxy import TcpProxy

PG_ADMIN_URL = os.environ.get(
    "SHIPYARD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REQUIRE_PG = os.environ.get("SHIPYARD_REQUIRE_POSTGRES") == "1"


def _with_db(url: str, name: str) -> str:
    return sa.engine.make_url(url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "shipyard.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    path = tmp_path / "shipyard.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[sa.Engine]:
    engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception as exc:
        message = (
            f"PostgreSQL is not reachable at {PG_ADMIN_URL} ({type(exc).__name__}); "
            "point SHIPYARD_TEST_POSTGRES_URL at a server to run these tests"
        )
        if REQUIRE_PG:
            pytest.fail(message + " (required: SHIPYARD_REQUIRE_POSTGRES=1)")
        pytest.skip(message)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def pg_template(pg_admin: sa.Engine) -> Iterator[str]:
    name = f"shipyard_tpl_{uuid.uuid4().hex[:10]}"
    with pg_admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    upgrade(_with_db(PG_ADMIN_URL, name))
    yield name
    with pg_admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_admin: sa.Engine, pg_template: str) -> Iterator[str]:
    name = f"shipyard_t_{uuid.uuid4().hex[:12]}"
    with pg_admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    yield _with_db(PG_ADMIN_URL, name)
    with pg_admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def stores() -> Iterator[list[SqlStore]]:
    """Stores opened by a test, closed after it."""
    opened: list[SqlStore] = []
    yield opened
    for store in opened:
        store.dispose()


@pytest.fixture
def make_service(stores: list[SqlStore]) -> Callable[..., Service]:
    """``make_service(url, *pipeline_texts, clock=None)``: a Service on a real database."""

    def make(url: str, *texts: str, clock: Callable[[], datetime] | None = None) -> Service:
        store = SqlStore(url)
        stores.append(store)
        svc = Service(store, clock=clock) if clock else Service(store)
        for text in texts:
            svc.register_pipeline(parse_pipeline(textwrap.dedent(text)), textwrap.dedent(text))
        return svc

    return make


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each test using this runs once on SQLite and once on PostgreSQL."""
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
def outage(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Outage]:
    """``db_url`` made so a test can take it away from a running server (``tests.outage``): start
    the server on ``outage.url``. On PostgreSQL that goes through a TCP proxy on loopback."""
    if db_url.startswith("sqlite"):
        yield Outage(db_url, monkeypatch)
        return
    url = sa.engine.make_url(db_url)
    with TcpProxy((url.host or "127.0.0.1", url.port or 5432)) as proxy:
        yield Outage(db_url, monkeypatch, proxy)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    """A real Prometheus (``tests/prometheus.py``), started, scraping every second; add targets
    with ``prometheus.scrape(service.target)``. Skipped without ``/usr/bin/prometheus`` unless
    ``SHIPYARD_REQUIRE_PROMETHEUS=1``."""
    with Prometheus(tmp_path / "prometheus") as server:
        yield server


@pytest.fixture
def web_service() -> Iterator[WebService]:
    """A service for checks to measure (``tests/checks/services.py``): ``/healthz``, and
    ``/metrics`` with ``http_requests_total{code}`` that rises by itself; ``fail(ratio)``."""
    with WebService() as service:
        yield service


@pytest.fixture
def versions() -> Iterator[Versions]:
    """Two versions of a service for routers to route to (``tests/routing.py``): ``/`` answers
    ``stable`` or ``canary``."""
    with WebService(version="stable") as stable, WebService(version="canary") as canary:
        yield Versions(stable, canary)


@pytest.fixture
def nginx(tmp_path: Path, versions: Versions) -> Iterator[Nginx]:
    """A real nginx in front of ``versions``, all traffic on stable; ``nginx.router()`` is its
    router. Skipped without nginx unless ``SHIPYARD_REQUIRE_ROUTERS=1``."""
    with Nginx(tmp_path / "nginx", versions) as server:
        yield server


@pytest.fixture
def haproxy(tmp_path: Path, versions: Versions) -> Iterator[Haproxy]:
    """A real haproxy in front of ``versions``, all traffic on stable; ``haproxy.router()`` is
    its router. Skipped without haproxy unless ``SHIPYARD_REQUIRE_ROUTERS=1``."""
    with Haproxy(tmp_path / "haproxy", versions) as server:
        yield server
