"""The two commands that start a run: ``trigger`` (a new run of a pipeline, or a promotion or
rollback of an artifact) and ``retry`` (a new run of a failed one, reusing what succeeded).

Each lays out the fresh run (the environments' rules applied by ``core.protection``), reads
the environments it may enter first (``engine.needs_to_start``) and lets ``engine.start``
take its first steps.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from core import engine
from core.artifacts import as_built, check_deployable
from core.commands import RetryRun, TriggerRun
from core.definition import resolve_parameters
from core.engine import Decision
from core.environments import Environments
from core.errors import CommandRefused, Forbidden, InvalidInput, NotFound
from core.model import RunState, new_run_state
from core.ports import PipelineVersion, Tx
from core.protection import only_deploy_to, protect
from core.runtime.reading import known
from core.states import RunStatus


def trigger(tx: Tx, _: None, command: TriggerRun, now: datetime, environments: Environments) -> Decision:
    if command.schedule is not None and (changed := tx.schedule_changed(*command.schedule)):
        return engine.reject(changed)
    try:
        if command.artifact_id is not None:
            command = _deploy_artifact(tx, command, environments)
        version = _version(tx, command)
    except CommandRefused as exc:
        return engine.reject(exc.message, kind=exc.kind)
    number = tx.next_run_number(command.pipeline)  # also serializes triggers of this pipeline
    if command.idempotency_key:
        existing = tx.run_by_idempotency_key(command.pipeline, command.idempotency_key)
        if existing is not None:
            return Decision(
                engine.Outcome.ACCEPTED,
                state=existing,
                duplicate=True,
                reason=f"already triggered as {existing.run.ref}",
            )
    try:
        fresh = new_run_state(
            run_id=uuid.uuid4().hex,
            number=number,
            definition=version.definition,
            pipeline_version=version.version,
            version_id=version.id,
            parameters=resolve_parameters(version.definition, command.parameters),
            source_revision=command.source_revision,
            revision_time=command.revision_time,
            actor=command.actor,
            idempotency_key=command.idempotency_key,
            retry_of=None,
            now=now,
            requested_by=command.requested_by,
            branch=command.branch,
            kind=command.kind,
            artifact_id=command.artifact_id,
            break_glass=command.break_glass,
        )
        if command.deploy_to is not None:
            fresh = only_deploy_to(fresh, command.deploy_to, f"{command.kind} to {command.deploy_to}")
        fresh = protect(fresh, environments)
    except CommandRefused as exc:
        return engine.reject(exc.message, kind=exc.kind)
    needed = known(tx, environments, engine.needs_to_start(fresh), fresh.run.id, now)
    return engine.start(fresh, now, known=needed)


def _version(tx: Tx, command: TriggerRun) -> PipelineVersion:
    """The pipeline version to run: the latest, or the one the command pins."""
    version = tx.latest_version(command.pipeline)
    if version is None:
        if tx.is_archived(command.pipeline):
            raise CommandRefused(f"pipeline {command.pipeline!r} is archived; restore it to run it")
        names = ", ".join(tx.pipeline_names()) or "none yet"
        raise NotFound(f"unknown pipeline {command.pipeline!r} (known: {names})")
    if command.pipeline_version is None or command.pipeline_version == version.version:
        return version
    pinned = tx.version_by_number(command.pipeline, command.pipeline_version)
    if pinned is None:
        raise NotFound(
            f"{command.pipeline} has no version {command.pipeline_version} (latest: {version.version})"
        )
    return pinned


def _deploy_artifact(tx: Tx, command: TriggerRun, environments: Environments) -> TriggerRun:
    """A promotion or rollback: the artifact must be registered and not marked bad, and a
    promotion must have passed the environment before its target on the path."""
    artifact = tx.artifact(command.artifact_id or "")
    if artifact is None:
        raise NotFound(f"no artifact {command.artifact_id!r} is registered")
    check_deployable(artifact)
    env = command.deploy_to
    if env is None:
        raise InvalidInput(f"say which environment to deploy {artifact.ref} to")
    previous = environments.required_previous(env)
    if command.kind == "promotion" and previous is not None and not tx.deployed_ok(artifact.id, previous):
        raise Forbidden(
            f"{artifact.ref} has not been deployed successfully to {previous} yet; "
            f"promote it to {previous} first (the path is {' → '.join(environments.path)})"
        )
    building = tx.load_run(artifact.run_id) if artifact.run_id else None
    return as_built(command, artifact, building.run if building is not None else None)


def retry(tx: Tx, old: RunState, command: RetryRun, now: datetime, environments: Environments) -> Decision:
    if old.run.status not in (RunStatus.FAILED, RunStatus.CANCELED):
        return engine.reject(
            f"{old.run.ref} is {old.run.status}; only failed or canceled runs can be retried"
        )
    if (newer := tx.retried_as(old.run.id)) is not None:  # (a second retry would deploy twice)
        return engine.reject(f"{old.run.ref} was retried already, as {newer}: retry that one if it failed")
    version = tx.version_by_id(old.run.version_id)
    assert version is not None
    fresh = new_run_state(
        run_id=uuid.uuid4().hex,
        number=tx.next_run_number(old.run.pipeline),
        definition=version.definition,
        pipeline_version=version.version,
        version_id=version.id,
        parameters=old.run.parameters,
        source_revision=old.run.source_revision,
        actor=command.actor,
        idempotency_key=None,
        retry_of=old.run.id,
        now=now,
        requested_by=old.run.requested_by or (old.run.triggered_by,),
        branch=old.run.branch,
        kind=old.run.kind,
        artifact_id=old.run.artifact_id,
    )
    ignored_by = command.actor.name if command.ignore_failure else None
    try:
        if old.run.kind != "deploy":  # a promotion or rollback stays one: its target only
            artifact = tx.artifact(old.run.artifact_id or "")
            if artifact is None:
                raise NotFound(f"the artifact {old.run.ref} deployed is no longer registered")
            check_deployable(artifact)
            target = old.run.deploy_to
            if target is None:
                raise InvalidInput(f"{old.run.ref} is a {old.run.kind} that names no environment")
            fresh = only_deploy_to(fresh, target, f"{old.run.kind} to {target}")
        fresh = protect(fresh, environments)
        needed = known(tx, environments, engine.needs_to_start(fresh, old, ignored_by), fresh.run.id, now)
        return engine.start(fresh, now, reuse=old, ignored_by=ignored_by, known=needed)
    except CommandRefused as exc:
        return engine.reject(exc.message, old, exc.kind)
