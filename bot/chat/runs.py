"""The run verbs: what can run (``list``), what ran (``runs``, ``runs --stuck``), starting one
(``run``), looking at one (``status``, ``logs``), and steering one (``cancel``, ``fail``,
``pause``, ``resume``, ``retry``, each needing the control role on that run). Registered on
import (``bot.chat``). A run whose environment asks first (``confirm: true``) is started by
the deploy question's button instead (``confirm``)."""

from __future__ import annotations

from collections.abc import Callable

from bot.backend import now
from bot.chat import block_kit
from bot.chat.confirm import ask_to_confirm, guarded_environments, start_run
from bot.chat.parse import Line, did_you_mean
from bot.chat.verbs import ChatBackend, Refusal, Reply, Who, _decide, _usage, verb
from core.access import Action
from core.commands import CancelRun, Command, FailRun, PauseRun, ResumeRun, RetryRun, TriggerRun
from core.duration import format_duration
from storage.reads import RunFilter

#: pipelines ``/deploy list`` shows (a message stays readable; ``run`` takes any pipeline)
LISTED = 100


@verb("list", "list", "the pipelines you can run", words=0)
async def list_pipelines(backend: ChatBackend, who: Who, line: Line) -> Reply:
    found = await backend.read(backend.reads.pipelines, None, LISTED + 1)
    if not found:
        return Reply("No pipelines yet.")
    more = ""
    if len(found) > LISTED:
        found = found[:LISTED]
        count = len(await backend.read(backend.reads.pipeline_names))
        more = f"\n…and {count - LISTED} more, after *{found[-1].name}* (the first {LISTED} by name)"
    rows = []
    for p in found:
        params = " ".join(
            f"{q.name}=…" if q.required else f"[{q.name}=…]" for q in p.latest.definition.parameters
        )
        rows.append(f"• *{p.name}* v{p.latest.version} — {p.latest.definition.description or ''} `{params}`")
    return Reply("\n".join(rows) + more)


@verb(
    "runs",
    "runs [pipeline] [--stuck]",
    "the latest runs; --stuck: the zombies, with a Cancel button each",
    words=2,
)
async def list_runs(backend: ChatBackend, who: Who, line: Line) -> Reply:
    if "--stuck" in line.words:
        return await _stuck_runs(backend)
    pipeline = line.words[0] if line.words else None
    states = await backend.read(backend.reads.runs, RunFilter(pipeline=pipeline), None, 10)
    if not states and pipeline is not None:
        await backend.pipeline(pipeline, archived=True)
    if not states:
        return Reply("No runs yet." if pipeline is None else f"No runs of `{pipeline}` yet.")
    rows = [
        f"{block_kit.EMOJI.get(s.run.status, '')} *{s.run.ref}* {s.run.status} — "
        f"{block_kit.who(s.run.triggered_by)}, "
        f"{s.run.created_at:%Y-%m-%d %H:%M} UTC"
        for s in states
    ]
    return Reply("\n".join(rows))


async def _stuck_runs(backend: ChatBackend) -> Reply:
    found = await backend.stuck(20)
    limit = format_duration(backend.shipyard.settings.stuck_after_seconds)
    if not found:
        return Reply(f"No stuck runs: every unfinished run changed within the last {limit}.")
    summary = f"{len(found)} run(s) unchanged for over {limit}:"
    return Reply(summary, [block_kit.text(summary), *(b for s in found for b in block_kit.stuck_run(s))])


@verb(
    "run",
    'run <pipeline> [key=value…] [branch=…] [--break-glass "reason"]',
    "start a run (admins: --break-glass passes freezes and required approvals)",
    Action.TRIGGER,
)
async def run(backend: ChatBackend, who: Who, line: Line) -> Reply:
    if not line.words:
        raise Refusal(_usage("run"))
    pipeline = line.words[0]
    info = await backend.pipeline(pipeline)
    words = line.words[1:]
    glass = None
    if "--break-glass" in words:
        at = words.index("--break-glass")
        if at + 1 >= len(words) or not words[at + 1].strip():
            raise Refusal('Say why you break the glass: `/deploy run <pipeline> … --break-glass "reason"`')
        glass = words[at + 1]
        del words[at : at + 2]
    if words:
        raise Refusal(f"Parameters look like `key=value`; what is `{words[0]}`? {_usage('run')}")
    latest = info.latest
    declared = {p.name for p in latest.definition.parameters}
    # `revision=` and `branch=` are the run's own, unless the pipeline has parameters so named
    revision = None if "revision" in declared else line.params.pop("revision", None)
    branch = None if "branch" in declared else line.params.pop("branch", None)
    command = TriggerRun(
        pipeline=pipeline,
        actor=who.actor,
        parameters=dict(line.params),
        source_revision=revision,
        branch=branch,
        break_glass=glass,
        report_to=who.report_to,
    )
    guarded = guarded_environments(backend, latest.definition, command.deploy_to)
    if guarded and glass is None:  # break-glass asks no second question: the admin said why
        return await ask_to_confirm(backend, who, command, latest.definition, latest.version, guarded)
    return await start_run(backend, who, command)


@verb("status", "status <run>", "where a run is", words=1)
async def status(backend: ChatBackend, who: Who, line: Line) -> Reply:
    if not line.words:
        raise Refusal(_usage("status"))
    state = await backend.find(line.words[0])
    waits = await backend.read(backend.shipyard.runners.waits, state.jobs, now())
    summary, blocks = block_kit.run_message(state, waits=waits)
    return Reply(summary, blocks)


@verb("logs", "logs <run> [stage/job]", "the last lines of a job's output", words=2)
async def logs(backend: ChatBackend, who: Who, line: Line) -> Reply:
    if not line.words:
        raise Refusal(_usage("logs"))
    state = await backend.find(line.words[0])
    names = {f"{state.stages[j.stage_index].name}/{j.name}": j for j in state.jobs}
    if len(line.words) > 1:
        job = names.get(line.words[1]) or next((j for j in state.jobs if j.name == line.words[1]), None)
        if job is None:
            raise Refusal(did_you_mean("job", line.words[1], list(names)))
    else:  # the most interesting job: the last failed one, else the last that started
        started = [j for j in state.jobs if j.started_at is not None]
        failed = [j for j in started if j.failed]
        if not started:
            return Reply(f"No job of {state.run.ref} has started yet.")
        job = (failed or started)[-1]
    tail = await backend.read(backend.shipyard.store.tail_log, job.id, 30)
    name = f"{state.stages[job.stage_index].name}/{job.name}"
    body = "\n".join(tail) or "(no output)"
    return Reply(f"{state.run.ref} {name} ({job.status}):\n```{body[-2900:]}```")


def _control(name: str, make: Callable[[str, Who, str], Command], done: str) -> None:
    async def handler(backend: ChatBackend, who: Who, line: Line) -> Reply:
        if not line.words:
            raise Refusal(_usage(name))
        state = await backend.find(line.words[0])
        reason = " ".join(line.words[1:])
        decision = await _decide(backend, make(state.run.id, who, reason))
        assert decision.state is not None
        return Reply(done.format(ref=decision.state.run.ref), public=True)

    handler.__name__ = name
    summary = CONTROL_SUMMARIES[name]
    reason = name in ("cancel", "fail")
    usage = f"{name} <run>{' [reason]' if reason else ''}"
    verb(name, usage, summary, Action.CONTROL, words=None if reason else 1)(handler)


CONTROL_SUMMARIES = {
    "cancel": "stop a run",
    "fail": "stop a run and mark it failed (e.g. its runner was lost mid-deploy)",
    "pause": "finish running jobs, start nothing new",
    "resume": "continue a paused run",
    "retry": "run a failed run again from where it failed",
}


_control("cancel", lambda run, w, why: CancelRun(run_id=run, actor=w.actor, reason=why), "{ref} canceled.")
_control("fail", lambda run, w, why: FailRun(run_id=run, actor=w.actor, reason=why), "{ref} marked failed.")
_control("pause", lambda run, w, why: PauseRun(run_id=run, actor=w.actor), "{ref} paused.")
_control("resume", lambda run, w, why: ResumeRun(run_id=run, actor=w.actor), "{ref} resumed.")
# the new run reports where the retry was typed
_control(
    "retry",
    lambda run, w, why: RetryRun(run_id=run, actor=w.actor, report_to=w.report_to),
    "Retrying as {ref}.",
)
