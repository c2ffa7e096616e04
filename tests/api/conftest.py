"""The REST API driven over real HTTP on loopback: ``bot.app.create_app`` served by aiohttp's
``TestServer``, a real engine and built-in runner executing real subprocesses, on a fresh
database per test (``db_url``: SQLite and PostgreSQL; ``sqlite_url``: SQLite only).

``await start_api(url)`` returns an ``Api``: an HTTP client holding one bearer token per
principal (``viewer``, ``deployer``, ``deployer2``, ``approver`` (in group ``release-managers``),
``approver2`` (no group), ``admin`` (in ``release-managers``))."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp import ClientTimeout
from aiohttp.test_utils import TestClient
from multidict import CIMultiDictProxy

from bot.app import SHIPYARD
from core.access import Role
from storage.directory import Directory
from storage.store import SqlStore
from tests.factory import make_settings, serve
from tests.pipelines import API_PIPELINES

PREFIX = "/api/v1"
PROBLEM = "application/problem+json"
TERMINAL = frozenset({"succeeded", "failed", "canceled"})
#: the smallest body limit the settings allow is 1 KiB; this leaves room for pipeline definitions
MAX_BODY = 16 * 1024
GROUP = "release-managers"

#: principal -> (roles, groups)
PRINCIPALS: dict[str, tuple[list[Role], list[str]]] = {
    "viewer": ([Role.VIEWER], []),
    "deployer": ([Role.DEPLOYER], []),
    "deployer2": ([Role.DEPLOYER], []),
    "approver": ([Role.APPROVER], [GROUP]),
    "approver2": ([Role.APPROVER], []),
    "admin": ([Role.ADMIN], [GROUP]),
}


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    text: str

    @property
    def json(self) -> Any:
        return json.loads(self.text)

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0].strip()


class Api:
    def __init__(self, client: TestClient, tokens: dict[str, str], url: str) -> None:
        self.client = client
        self.tokens = tokens
        self.url = url

    @property
    def shipyard(self) -> Any:
        return self.client.app[SHIPYARD]  # type: ignore[index]

    @property
    def store(self) -> SqlStore:
        return self.shipyard.store  # type: ignore[no-any-return]

    def auth(self, who: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}

    async def call(
        self,
        method: str,
        path: str,
        who: str | None = "admin",
        *,
        json: Any = None,
        data: bytes | str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """``path`` is relative to /api/v1 unless it starts with /api or another root path."""
        url = path if path.startswith(("/api/", "/healthz", "/readyz")) else PREFIX + path
        sent = {**self.auth(who), **(headers or {})}
        async with self.client.request(method, url, json=json, data=data, headers=sent) as response:
            return Reply(response.status, response.headers, await response.text())

    async def get(self, path: str, who: str | None = "viewer", **kw: Any) -> Reply:
        return await self.call("GET", path, who, **kw)

    async def post(self, path: str, who: str | None = "admin", **kw: Any) -> Reply:
        if "json" not in kw and "data" not in kw:
            kw["json"] = {}
        return await self.call("POST", path, who, **kw)

    async def trigger(self, pipeline: str, who: str = "deployer", **body: Any) -> dict[str, Any]:
        reply = await self.post(f"/pipelines/{pipeline}/runs", who, json=body)
        assert reply.status == 202, reply.text
        return reply.json  # type: ignore[no-any-return]

    async def run(self, ref: str) -> dict[str, Any]:
        reply = await self.get(f"/runs/{ref.replace('#', '%23')}")
        assert reply.status == 200, reply.text
        return reply.json  # type: ignore[no-any-return]

    async def wait(
        self,
        ref: str,
        until: Callable[[dict[str, Any]], bool] = lambda r: r["status"] in TERMINAL,
        timeout: float = 15.0,
    ) -> dict[str, Any]:
        """Poll GET /runs/{ref} until ``until`` holds."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            run = await self.run(ref)
            if until(run):
                return run
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting; last seen: {run['status']}: {run}")
            await asyncio.sleep(0.02)

    async def wait_status(self, ref: str, status: str) -> dict[str, Any]:
        return await self.wait(ref, lambda r: r["status"] == status or r["status"] in TERMINAL)

    async def db(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` on the service's database thread (serialized with the engine's writes)."""
        return await self.shipyard.orchestrator.db(fn, *args)

    async def stream(self, path: str, who: str = "viewer", headers: dict[str, str] | None = None) -> Reply:
        async with self.client.get(
            PREFIX + path, headers={**self.auth(who), **(headers or {})}, timeout=ClientTimeout(total=20)
        ) as response:
            return Reply(response.status, response.headers, await response.text())


def assert_problem(reply: Reply, status: int, *fragments: str) -> dict[str, Any]:
    """``reply`` is an RFC 9457 problem document with ``status`` whose detail names ``fragments``."""
    assert reply.status == status, f"expected {status}, got {reply.status}: {reply.text}"
    assert reply.content_type == PROBLEM, reply.headers
    body: dict[str, Any] = reply.json
    assert body["status"] == status
    assert body["type"] and isinstance(body["type"], str)
    assert body["title"] and isinstance(body["title"], str)
    assert body["detail"] and isinstance(body["detail"], str)
    for fragment in fragments:
        assert fragment in body["detail"], f"{fragment!r} not in {body['detail']!r}"
    return body


def parse_sse(text: str) -> list[dict[str, Any]]:
    """The messages of a Server-Sent Events stream: each with ``id`` (int), ``event``, ``data``."""
    messages = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        if "data" in fields:
            messages.append(
                {"id": int(fields["id"]), "event": fields["event"], "data": json.loads(fields["data"])}
            )
    return messages


StartApi = Callable[..., Awaitable[Api]]


@pytest.fixture(scope="session")
def api_pg_database(pg_admin: sa.Engine, pg_template: str) -> Iterator[str]:
    name = f"shipyard_api_{uuid.uuid4().hex[:10]}"
    with pg_admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    yield pg_admin.url.set(database=name).render_as_string(hide_password=False)
    with pg_admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(api_pg_database: str) -> str:
    """Overrides the root ``pg_url`` for these tests: still a migrated database with nothing in it
    for every test, but one database for the session, emptied before each test. Emptied with
    DELETE, foreign keys not checked (``session_replication_role``): on tables this small that
    takes a tenth of the time of TRUNCATE, which takes a tenth of CREATE DATABASE … TEMPLATE;
    without the privilege for it (not a superuser), TRUNCATE."""
    engine = sa.create_engine(api_pg_database, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("SET LOCAL lock_timeout = '10s'")
            tables = list(
                conn.exec_driver_sql(
                    "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
                    "AND tablename <> 'alembic_version'"
                ).scalars()
            )
            sequences = list(
                conn.exec_driver_sql(
                    "SELECT sequencename FROM pg_sequences WHERE schemaname = current_schema()"
                ).scalars()
            )
            try:
                with conn.begin_nested():
                    conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
                    conn.exec_driver_sql("; ".join(f'DELETE FROM "{t}"' for t in tables))
                    for sequence in sequences:
                        conn.exec_driver_sql(f'ALTER SEQUENCE "{sequence}" RESTART')
            except sa.exc.DBAPIError:
                names = ", ".join(f'"{t}"' for t in tables)
                conn.exec_driver_sql(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    finally:
        engine.dispose()
    return api_pg_database


@pytest.fixture
async def start_api(tmp_path: Path) -> AsyncIterator[StartApi]:
    """``await start_api(url, pipelines=None, **settings)``: the application served on loopback,
    with tokens, on ``API_PIPELINES`` and ``pipelines`` (name → YAML) besides."""
    clients: list[TestClient] = []

    async def start(url: str, pipelines: Mapping[str, str] | None = None, **overrides: Any) -> Api:
        options: dict[str, Any] = {
            "lease_seconds": 5.0,
            "kill_grace_seconds": 1.0,
            "runner_name": "api-test",
            "runner_capacity": 8,
            "max_body_bytes": MAX_BODY,
            **overrides,
        }
        settings = make_settings(url, tmp_path, {**API_PIPELINES, **(pipelines or {})}, **options)
        store = SqlStore(url)
        try:
            directory = Directory(store)
            now = datetime.now(UTC)
            tokens = {
                name: directory.create_token(name, roles, now, by="tests", groups=groups)
                for name, (roles, groups) in PRINCIPALS.items()
            }
        finally:
            store.dispose()
        client = await serve(settings)
        clients.append(client)
        return Api(client, tokens, url)

    yield start
    for client in reversed(clients):
        await client.close()


@pytest.fixture
async def api(db_url: str, start_api: StartApi) -> Api:
    """The API on SQLite and on PostgreSQL (the test runs once on each)."""
    return await start_api(db_url)


@pytest.fixture
async def lite(sqlite_url: str, start_api: StartApi) -> Api:
    """The API on SQLite only, for behaviour that does not depend on the database."""
    return await start_api(sqlite_url)
