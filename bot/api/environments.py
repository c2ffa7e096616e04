"""Environments and what was deployed to them; the audit log."""

from __future__ import annotations

import re

from aiohttp import web

from bot.api.common import id_cursor, known_environment, reply
from bot.api.gateway import gw
from bot.api.problems import Problem
from bot.api.routing import Call
from bot.api.schemas import (
    DORA_WINDOW,
    DORA_WINDOW_WORDS,
    AuditOut,
    AuditPage,
    AuditQuery,
    CheckHealthOut,
    DeploymentOut,
    DeploymentPage,
    DoraOut,
    DoraQuery,
    EnvironmentList,
    EnvironmentOut,
    HealthChangeOut,
    HealthOut,
    HealthPage,
    MeasurementOut,
    PageQuery,
)
from bot.api.spec import API
from bot.backend import now
from core.access import Action
from core.analysis import EnvironmentHealth, Health, HealthChange
from core.checks import Measurement
from core.dora import FourKeys, four_keys, parse_window
from core.environments import EnvironmentPolicy
from core.ports import Deployment

#: measurements of each check shown with an environment
LAST_MEASUREMENTS = 5


async def _environment(call: Call, name: str) -> EnvironmentOut:
    g = gw(call)
    current = await g.read(g.reads.current_deployment, name)
    last = await g.read(g.reads.deployments, name, None, 1)
    return EnvironmentOut(
        id=name,
        name=name,
        current=DeploymentOut.of(current) if current else None,
        last_deployment=DeploymentOut.of(last[0]) if last else None,
    )


def _health_out(
    policy: EnvironmentPolicy, health: EnvironmentHealth | None, last: dict[str, list[Measurement]]
) -> HealthOut:
    watched = policy.health.checks if policy.health is not None else []
    checks = [
        CheckHealthOut(
            name=c, kind=policy.checks[c].kind, last=[MeasurementOut.of(m) for m in last.get(c, [])]
        )
        for c in watched
    ]
    if health is None or not watched:
        reason = "no health checks" if not watched else "no measurement yet"
        return HealthOut(state=Health.UNKNOWN, since=None, reason=reason, checks=checks)
    return HealthOut(state=health.state, since=health.since, reason=health.reason, checks=checks)


async def _health(
    call: Call, name: str, before: int | None = None, limit: int = 0
) -> tuple[HealthOut, list[HealthChange]]:
    """``name``'s health now, with each watched check's latest measurements, and a page of its
    changes (``limit`` of them, older than ``before``), in one trip to the read pool."""
    g = gw(call)
    policy = g.shipyard.settings.environments.policy(name)
    watched = policy.health.checks if policy.health is not None else []

    def read() -> tuple[HealthOut, list[HealthChange]]:
        health, changes = g.analyses.health_page(name, before, limit)
        last = g.analyses.recent(name, watched, LAST_MEASUREMENTS) if watched else {}
        return _health_out(policy, health, last), changes

    return await g.read(read)


@API.op(
    "GET",
    "/environments",
    summary="Environments and what runs in each",
    action=Action.READ,
    tag="environments",
    responses={200: ("every environment a pipeline deploys to", EnvironmentList)},
)
async def list_environments(call: Call) -> web.Response:
    names = await gw(call).read(gw(call).reads.environment_names)
    return reply(EnvironmentList(items=[await _environment(call, n) for n in names]))


@API.op(
    "GET",
    "/environments/{env_id}",
    summary="An environment",
    action=Action.READ,
    tag="environments",
    responses={200: ("the environment", EnvironmentOut)},
)
async def get_environment(call: Call) -> web.Response:
    name = call.params["env_id"]
    await known_environment(call, name)
    found = await _environment(call, name)
    health, _ = await _health(call, name)
    return reply(found.model_copy(update={"health": health}))


@API.op(
    "GET",
    "/environments/{env_id}/health",
    summary="An environment's health and its changes, newest first",
    action=Action.READ,
    tag="environments",
    query=PageQuery,
    responses={200: ("its health now and a page of its changes", HealthPage)},
)
async def get_health(call: Call) -> web.Response:
    """Healthy, degraded (a check failing under its limit, or not measured yet), unhealthy (a
    check failed its last `failure_limit` measurements) or unknown (no checks, no data)."""
    name = call.params["env_id"]
    q: PageQuery = call.query
    await known_environment(call, name)
    current, found = await _health(call, name, id_cursor(q.cursor, 2**63 - 1), q.limit + 1)
    more = len(found) > q.limit
    found = found[: q.limit]
    items = [
        HealthChangeOut(id=c.id, at=c.at, from_state=c.from_state, to_state=c.to_state, reason=c.reason)
        for c in found
    ]
    cursor = str(found[-1].id) if more else None
    return reply(HealthPage(current=current, items=items, next_cursor=cursor))


@API.op(
    "GET",
    "/environments/{env_id}/deployments",
    summary="What was deployed to an environment, newest first",
    action=Action.READ,
    tag="environments",
    query=PageQuery,
    responses={200: ("a page of deployments", DeploymentPage)},
)
async def list_deployments(call: Call) -> web.Response:
    name = call.params["env_id"]
    q: PageQuery = call.query
    reads = gw(call).reads

    def page() -> tuple[list[str], list[Deployment]]:  # one trip to the read pool
        names = reads.environment_names()
        found = reads.deployments(name, id_cursor(q.cursor, 2**63 - 1), q.limit + 1) if name in names else []
        return names, found

    names, found = await gw(call).read(page)
    if name not in names:
        raise Problem(404, f"no environment {name!r} (environments: {', '.join(names) or 'none yet'})")
    more = len(found) > q.limit
    found = found[: q.limit]
    cursor = str(found[-1].id) if more else None
    return reply(DeploymentPage(items=[DeploymentOut.of(d) for d in found], next_cursor=cursor))


@API.op(
    "GET",
    "/environments/{env_id}/dora",
    summary="DORA's four keys for an environment over a window",
    action=Action.READ,
    tag="environments",
    query=DoraQuery,
    responses={200: ("the four keys, each with the deployments it rests on", DoraOut)},
)
async def get_dora(call: Call) -> web.Response:
    """Deployment frequency, lead time for changes, change failure rate and time to restore,
    as defined in docs/dora.md. A commit time that was not recorded is counted as unknown."""
    name = call.params["env_id"]
    q: DoraQuery = call.query
    if re.fullmatch(DORA_WINDOW, q.window) is None:
        raise Problem(400, f"invalid window {q.window!r}: {DORA_WINDOW_WORDS}")
    window = parse_window(q.window)
    reads = gw(call).reads
    until = now()
    since = until - window

    def read() -> tuple[list[str], FourKeys | None]:
        names = reads.environment_names()
        if name not in names:
            return names, None
        return names, four_keys(name, reads.dora_facts(name, since, until), since, until, q.pipeline)

    names, keys = await gw(call).read(read)
    if keys is None:
        raise Problem(404, f"no environment {name!r} (environments: {', '.join(names) or 'none yet'})")
    return reply(DoraOut.of(keys, q.window))


@API.op(
    "GET",
    "/audit",
    summary="The audit log, newest first",
    action=Action.MANAGE,
    tag="audit",
    query=AuditQuery,
    responses={200: ("a page of audit entries", AuditPage)},
)
async def list_audit(call: Call) -> web.Response:
    """Every command and every mutating request, allowed or refused. Each entry carries the
    SHA-256 of the one before it; `shipyard audit verify` checks the chain."""
    q: AuditQuery = call.query
    found = await gw(call).read(gw(call).reads.audit, id_cursor(q.cursor), q.limit + 1, q.actor, q.action)
    more = len(found) > q.limit
    found = found[: q.limit]
    items = [
        AuditOut(
            id=c.id,
            at=c.entry.at,
            actor=c.entry.actor,
            channel=c.entry.channel,
            action=c.entry.action,
            target=c.entry.target,
            outcome=c.entry.outcome,
            reason=c.entry.reason,
            detail=c.entry.detail,
            prev_hash=c.prev_hash,
            hash=c.hash,
        )
        for c in found
    ]
    return reply(AuditPage(items=items, next_cursor=str(found[-1].id) if more else None))
