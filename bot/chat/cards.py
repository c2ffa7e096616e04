"""What the chat shows that it has to read beyond a run: the gate card's artifact and what is
live beside it, a failed job's last log lines, a rollback's lock, an environment's health. Read
here once for every face (Slack's thread posts and App Home, the console), through the
``ChatBackend``; drawn by the pure ``bot.chat.block_kit`` and ``bot.chat.threads``."""

from __future__ import annotations

from bot.backend import Backend, now
from bot.chat import block_kit, threads
from bot.chat.verbs import ChatBackend
from core.access import Action, Role
from core.analysis import EnvironmentHealth, Health
from core.assignment import run_artifact
from core.model import Gate, RunState
from core.ports import Deployment
from storage.analyses import AnalysisStore
from storage.artifacts import ArtifactStore
from storage.locks import LockStore

#: role names, which a gate's approvers may name besides principals and groups
ROLES = frozenset(str(r) for r in Role)
#: how many of an environment's latest deployments are looked through for what is live
LIVE_LOOK = 20
#: a failed job's log lines shown
TAIL_LINES = 10


async def gate_card(backend: ChatBackend, state: RunState, gate: Gate) -> tuple[str, list[block_kit.Block]]:
    """``blocks.gate_card`` with what it shows read: the run's artifact, what is live beside it
    and whom its approvers' roles and groups mention (``approver_mentions``)."""
    rendered = threads.render(
        state, threads.GateCard(gate), await _shown(backend, state, threads.GateCard(gate))
    )
    assert rendered is not None  # (a gate card always has something to say)
    return rendered


async def compose(
    backend: ChatBackend, state: RunState, post: threads.ThreadPost
) -> tuple[str, list[block_kit.Block]] | None:
    """A thread post as it is to be said now (None: it has nothing to say any more)."""
    return threads.render(state, post, await _shown(backend, state, post))


async def artifact_of(backend: ChatBackend, state: RunState) -> str | None:
    """What the run deploys, when known: the artifact it was given, or the one it built."""
    if state.run.artifact_id is not None:
        given = await backend.read(ArtifactStore(backend.shipyard.store).get, state.run.artifact_id)
        return given.ref if given is not None else None
    built = run_artifact(state)
    return built.ref if built is not None else None


async def live_beside(backend: ChatBackend, state: RunState, gate: Gate) -> Deployment | None:
    """What was live in the gate's environment apart from this run: now while the gate is
    open, and when it was decided once it is (so a decided card keeps what it compared)."""
    env = state.stages[gate.stage_index].environment
    if env is None:
        return None
    cutoff = gate.decided_at if gate.status != "open" else None
    for deployment in await backend.read(backend.reads.deployments, env, None, LIVE_LOOK):
        if (
            deployment.status in ("succeeded", "partial")
            and deployment.run_id != state.run.id
            and (cutoff is None or deployment.finished_at <= cutoff)
        ):
            return deployment
    return None


async def _shown(backend: ChatBackend, state: RunState, post: threads.ThreadPost) -> threads.Shown:
    at = now()
    match post:
        case threads.GateCard(gate=gate):
            return threads.Shown(
                at,
                live=await live_beside(backend, state, gate),
                artifact=await artifact_of(backend, state),
                groups=await approver_mentions(backend, gate),
                health=await _gate_health(backend, state, gate),
                link=block_kit.run_page(backend.shipyard.settings.public_url, state.run),
            )
        case threads.JobFailed(job=job, attempt=attempt):
            tail = await backend.read(backend.shipyard.store.tail_log, job.id, TAIL_LINES, attempt)
            return threads.Shown(at, tail=tail)
        case threads.RollbackLocked(environment=env):
            return threads.Shown(
                at, lock=await backend.read(LockStore(backend.shipyard.store).current, env, at)
            )
        case _:
            return threads.Shown(at)


async def approver_mentions(backend: Backend, gate: Gate) -> dict[str, list[str]]:
    """Whom to mention for each of ``gate``'s approvers (``block_kit.approvers_line``): a
    role's Slack user groups (configuration), and for an access group such as
    ``release-managers`` its members who are Slack users or user groups and held the approver
    role when the gate opened: the people who can clear it, so Slack notifies them."""
    mentions = block_kit.role_groups(backend.shipyard.settings.slack_roles)
    at = gate.opened_at or now()
    for name in gate.approvers:
        if name in mentions or name in ROLES or block_kit.mentionable(name):
            continue
        members = await backend.read(backend.directory.members, name, at)
        found = [m.name for m in members if block_kit.mentionable(m.name) and m.may(Action.APPROVE)]
        if found:
            mentions[name] = found
    return mentions


def watched(backend: ChatBackend, env: str) -> bool:
    """Whether ``env`` watches health checks (only then does it show a health)."""
    return backend.shipyard.settings.environment(env).health is not None


async def health_of(backend: ChatBackend, env: str) -> EnvironmentHealth | None:
    """``env``'s health, when it watches health checks (``unknown`` before any measurement)."""
    if not watched(backend, env):
        return None
    found = await backend.read(AnalysisStore(backend.shipyard.store).health, env, quick=True)
    return found or EnvironmentHealth(
        env, Health.UNKNOWN, backend.shipyard.service.clock(), "no measurement yet"
    )


async def healths(backend: ChatBackend, envs: list[str]) -> dict[str, EnvironmentHealth]:
    """The health of each of ``envs`` that watches health checks, read at once."""
    if not any(watched(backend, env) for env in envs):
        return {}
    every = await backend.read(AnalysisStore(backend.shipyard.store).healths, quick=True)
    clock = backend.shipyard.service.clock()
    return {
        env: every.get(env) or EnvironmentHealth(env, Health.UNKNOWN, clock, "no measurement yet")
        for env in envs
        if watched(backend, env)
    }


async def _gate_health(backend: ChatBackend, state: RunState, gate: Gate) -> EnvironmentHealth | None:
    """The health of an open gate's environment (a decided card shows none: it would be now's)."""
    env = state.stages[gate.stage_index].environment
    return await health_of(backend, env) if env is not None and gate.status == "open" else None
