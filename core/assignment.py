"""What a runner needs to execute a job or a gate check: the command and its environment.

User-supplied values (parameters, outputs of earlier jobs) only ever travel as environment
variables; they are never pasted into a command string.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.artifacts import ArtifactSpec, parse_artifact_output
from core.definition import env_key
from core.errors import CommandRefused
from core.model import Gate, Job, RunState
from core.states import JobStatus
from core.tracing import gate_traceparent, job_traceparent


@dataclass(frozen=True, slots=True, kw_only=True)
class Assignment:
    run_id: str
    job_id: str
    attempt: int
    pipeline: str
    stage: str
    name: str
    command: str | tuple[str, ...]
    env: dict[str, str] = field(repr=False)
    timeout_s: float
    #: the environment whose secrets the job gets (``core.secrets``), and those secrets by
    #: name, still encrypted: they are decrypted only when the job is handed to its runner
    secrets_from: str | None = None
    sealed: dict[str, str] = field(default_factory=dict, repr=False)
    #: the decrypted values in ``env``: masked in everything the job writes
    masked: tuple[str, ...] = field(default=(), repr=False)
    #: why the job must not run (its secrets cannot be decrypted): the runner fails it with this
    refusal: str = ""
    #: a note for the top of the job's log
    notice: str = ""

    @property
    def label(self) -> str:
        return f"{self.stage}/{self.name}"


def base_env(state: RunState, stage_index: int) -> dict[str, str]:
    run = state.run
    stage = state.definition.stages[stage_index]
    env = {
        "SHIPYARD_RUN_ID": run.id,
        "SHIPYARD_RUN_NUMBER": str(run.number),
        "SHIPYARD_PIPELINE": run.pipeline,
        "SHIPYARD_PIPELINE_VERSION": str(run.pipeline_version),
        "SHIPYARD_STAGE": stage.name,
        "SHIPYARD_ENVIRONMENT": stage.environment or "",
        "SHIPYARD_SOURCE_REVISION": run.source_revision or "",
        "SHIPYARD_TRIGGERED_BY": run.triggered_by,
    }
    for name, value in run.parameters.items():
        env[f"SHIPYARD_PARAM_{env_key(name)}"] = value
    for job in state.jobs:
        if job.stage_index < stage_index:
            prefix = f"SHIPYARD_OUTPUT_{env_key(state.definition.stages[job.stage_index].name)}_"
            for key, value in job.outputs.items():
                env[prefix + env_key(key)] = value
    return env


def run_artifact(state: RunState) -> ArtifactSpec | None:
    """The artifact this run built: the latest ``artifact`` output of its finished jobs."""
    found = None
    for job in state.jobs:
        reused = job.status is JobStatus.SKIPPED and job.reused_from is not None  # a retry's
        if "artifact" in job.outputs and (job.status is JobStatus.SUCCEEDED or reused):
            try:
                found = parse_artifact_output(job.outputs["artifact"])
            except CommandRefused:
                continue  # (the job was failed for it when it reported)
    return found


def for_job(state: RunState, job: Job, artifact: ArtifactSpec | None = None) -> Assignment:
    """``artifact``: what a deploy stage deploys (the run's promoted artifact, or the one it
    built), passed as ``SHIPYARD_ARTIFACT_*``."""
    jdef = state.definition.stages[job.stage_index].all_jobs[job.index]
    env = {**jdef.env, **base_env(state, job.stage_index)}
    if artifact is not None and state.stages[job.stage_index].environment is not None:
        env["SHIPYARD_ARTIFACT_NAME"] = artifact.name
        env["SHIPYARD_ARTIFACT_VERSION"] = artifact.version
        env["SHIPYARD_ARTIFACT_DIGEST"] = artifact.digest
        env["SHIPYARD_ARTIFACT_URI"] = artifact.uri
    rollout = state.stages[job.stage_index].rollout
    if rollout is not None:  # the pool the new version goes on, and the one serving before it
        env["SHIPYARD_ROLLOUT_POOL"], env["SHIPYARD_ROLLOUT_RETIRED"] = rollout.pools[1], rollout.pools[0]
    env["SHIPYARD_JOB"] = job.name
    env["SHIPYARD_JOB_ID"] = job.id
    env["SHIPYARD_ATTEMPT"] = str(job.attempt)
    env["TRACEPARENT"] = job_traceparent(job.run_id, job.id, job.attempt)
    command = jdef.run if isinstance(jdef.run, str) else tuple(jdef.run)
    return Assignment(
        run_id=job.run_id,
        job_id=job.id,
        attempt=job.attempt,
        pipeline=state.run.pipeline,
        stage=state.definition.stages[job.stage_index].name,
        name=job.name,
        command=command,
        env=env,
        timeout_s=job.timeout_s,
    )


def for_gate_check(state: RunState, gate: Gate) -> Assignment:
    gdef = state.definition.stages[gate.stage_index].gate
    assert gdef is not None and gdef.run is not None
    env = base_env(state, gate.stage_index)
    env["SHIPYARD_GATE"] = gate.stage_name
    env["TRACEPARENT"] = gate_traceparent(gate.run_id, gate.id)
    command = gdef.run if isinstance(gdef.run, str) else tuple(gdef.run)
    return Assignment(
        run_id=gate.run_id,
        job_id=gate.id,
        attempt=0,
        pipeline=state.run.pipeline,
        stage=gate.stage_name,
        name="gate",
        command=command,
        env=env,
        timeout_s=max(1.0, min(gate.interval_s, gate.timeout_s or gate.interval_s)),
    )
