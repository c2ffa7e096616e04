"""Block Kit for everything the bot says: run messages, gate cards, lists, help. Plain dicts in
Slack's documented shapes (within its limits: 50 blocks a message, 3000 characters a section),
each with a ``text`` fallback; the console renders the same blocks as text."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from bot.chat.health import line as health_line
from bot.chat.rollout_blocks import PAUSABLE, STEERABLE, can_promote, rolling_stage, rollout_lines
from core.admission import QueueEntry
from core.analysis import EnvironmentHealth
from core.checks import Measurement
from core.duration import format_duration
from core.model import Gate, Job, Run, RunState, Stage
from core.ports import Deployment
from core.states import RUN_TERMINAL, GateStatus, JobStatus, RunStatus, StageStatus
from core.zombies import Stuck

Block = dict[str, Any]

EMOJI = {
    "pending": ":white_circle:",
    "queued": ":hourglass_flowing_sand:",
    "running": ":arrows_counterclockwise:",
    "waiting": ":double_vertical_bar:",
    "verifying": ":mag:",
    "rolling_out": ":twisted_rightwards_arrows:",
    "paused": ":double_vertical_bar:",
    "succeeded": ":white_check_mark:",
    "partial": ":warning:",
    "failed": ":x:",
    "timed_out": ":alarm_clock:",
    "lost": ":grey_question:",
    "canceled": ":no_entry_sign:",
    "skipped": ":fast_forward:",
    "open": ":raised_hand:",
    "approved": ":white_check_mark:",
    "rejected": ":x:",
}
SECTION_MAX = 3000

# action ids: the Slack app listens for these
APPROVE, REJECT, CANCEL, RETRY = "gate_approve", "gate_reject", "run_cancel", "run_retry"
IGNORE, FAIL = "run_ignore_failure", "run_fail"
#: an approver's verdict on a deployment being verified
LOOKS_GOOD, VERIFY_ROLLBACK = "verify_looks_good", "verify_roll_back"
#: a canary rollout's controls: past the step it is in, past every step, the run's clock, abort
#: (Slack asks for the abort's reason in a form first)
PROMOTE, PROMOTE_FULLY = "rollout_promote", "rollout_promote_fully"
PAUSE, RESUME, ABORT = "run_pause", "run_resume", "rollout_abort"
#: "Roll back <env>": asks first (``bot.chat.environments``), then rolls back
ROLLBACK_ASK = "env_rollback_ask"
CONFIRM = "run_confirm"


def text(markdown: str) -> Block:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _clip(markdown)}}


def context(markdown: str) -> Block:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": _clip(markdown)}]}


def button(
    label: str, action_id: str, value: str, style: str | None = None, confirm: Block | None = None
) -> Block:
    b: Block = {"type": "button", "text": {"type": "plain_text", "text": label[:75]}, "action_id": action_id}
    b["value"] = value[:2000]
    if style:
        b["style"] = style
    if confirm:
        b["confirm"] = confirm
    return b


def actions(block_id: str, *elements: Block) -> Block:
    return {"type": "actions", "block_id": block_id[:255], "elements": list(elements)}


def confirm(title: str, body: str, yes: str, style: str = "danger") -> Block:
    return {
        "title": {"type": "plain_text", "text": title[:100]},
        "text": {"type": "plain_text", "text": body[:300]},
        "confirm": {"type": "plain_text", "text": yes[:30]},
        "deny": {"type": "plain_text", "text": "Never mind"},
        "style": style,
    }


def _clip(s: str, limit: int = SECTION_MAX) -> str:
    return s if len(s) <= limit else s[: limit - 1] + "…"


#: a Slack user-group ID (``S0614TZR7``): upper-case letters and digits, at least one digit
_SUBTEAM = re.compile(r"S(?=[A-Z0-9]*[0-9])[A-Z0-9]{2,}")


def who(name: str) -> str:
    """A principal as Slack shows it: a mention for Slack user and user-group IDs."""
    if _slack_user(name):
        return f"<@{name}>"
    return f"<!subteam^{name}>" if _SUBTEAM.fullmatch(name) else name


def _slack_user(name: str) -> bool:
    return name[:1] in ("U", "W") and name.isalnum()


def mentionable(name: str) -> bool:
    """Whether ``name`` is a Slack user or user-group ID (``who`` mentions it)."""
    return _slack_user(name) or _SUBTEAM.fullmatch(name) is not None


def role_groups(slack_roles: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Role → the Slack user groups configuration gives it (``slack_roles`` read backwards)."""
    groups: dict[str, list[str]] = {}
    for principal, roles in slack_roles.items():
        if _SUBTEAM.fullmatch(principal):
            for role in roles:
                groups.setdefault(role, []).append(principal)
    return groups


def approvers_line(approvers: Iterable[str], groups: Mapping[str, Sequence[str]] | None = None) -> str:
    """Who may clear a gate, as mentions: users and user groups by ID, a role by the Slack
    user groups mapped to it and an access group by its Slack members (``groups``: from
    ``role_groups`` and ``bot.chat.cards.approver_mentions``); anything else (a role or a group
    with no one in Slack) stays plain text. Each mention appears once."""
    shown: dict[str, None] = {}
    for name in approvers:
        for shown_as in [who(g) for g in (groups or {}).get(name, ())] or [who(name)]:
            shown.setdefault(shown_as)
    return ", ".join(shown) or "anyone with the approver role"


def took(start: datetime | None, end: datetime | None) -> str:
    return format_duration((end - start).total_seconds()) if start and end else ""


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def ref_value(
    state: RunState, gate: Gate | None = None, step: int | None = None, stage: int | None = None
) -> str:
    """What a run or gate button carries: the run, the gate, for Promote the rollout's step
    shown (``Rollout.step``): a press once the rollout moved on is refused, not taken further;
    for Looks good and Roll back the index of the stage being verified, so a press on a message
    showing staging's verification never ends production's."""
    ref: dict[str, object] = {"run": state.run.id}
    if gate is not None:
        ref["gate"] = gate.id
    if step is not None:
        ref["step"] = step
    if stage is not None:
        ref["stage"] = stage
    return json.dumps(ref)


# -- the run message -----------------------------------------------------------------------------
def run_summary(state: RunState) -> str:
    run = state.run
    return f"{EMOJI.get(run.status, '')} {run.ref} {run.status}"


def run_message(
    state: RunState,
    place: QueueEntry | None = None,
    *,
    now: datetime | None = None,
    measured: Sequence[Measurement] | None = None,
    waits: Mapping[str, str] | None = None,
    link: str | None = None,
) -> tuple[str, list[Block]]:
    """The one message per run, edited in place as it moves. ``place``: where it waits in its
    environment's queue, when it waits in one; ``now``: to say how long a rollout's timed step
    has left; ``measured``: its analysis step's newest measurements (``rollout_blocks``);
    ``waits``: why queued jobs wait for a runner, by job id (``RunnerRegistry.waits``);
    ``link``: its page in the web view (``run_page``)."""
    run = state.run
    blocks = [text(_run_head(run))]
    if run.break_glass:
        blocks.append(context(f":rotating_light: break glass: {run.break_glass}"))
    if run.status is RunStatus.QUEUED:
        blocks.append(context(_queue_note(run, place)))
    blocks.extend(context(line) for line in runner_wait_lines(state, waits or {}))
    if run.parameters:
        blocks.append(context(" ".join(f"`{k}={v}`" for k, v in run.parameters.items())))
    blocks.append(text("\n".join(_stage_line(state, stage) for stage in state.stages)))
    if run.reason and run.status in RUN_TERMINAL and run.status is not RunStatus.SUCCEEDED:
        blocks.append(context(run.reason))
    elif run.reason and run.status is RunStatus.VERIFYING:
        blocks.append(context(f":mag: {run.reason}"))
    for warning in run.warnings[:5]:
        blocks.append(context(f":warning: {warning}"))
    stage = rolling_stage(state)
    if stage is not None:
        blocks.append(text("\n".join(rollout_lines(state, stage, now, measured))))
    if link:
        blocks.append(context(view_run(link)))
    buttons = _run_buttons(state)
    if buttons:
        blocks.append(actions(f"run-{run.id}-{run.version}", *buttons))
    return run_summary(state), blocks


def run_page(public_url: str | None, run: Run) -> str | None:
    """The run's page in the web view, when Shipyard knows the address people reach it at
    (``SHIPYARD_PUBLIC_URL``)."""
    return f"{public_url.rstrip('/')}/ui/runs/{run.pipeline}/{run.number}" if public_url else None


def view_run(link: str) -> str:
    return f":globe_with_meridians: <{link}|View run>: its timeline, gates and whole logs"


def runner_wait_lines(state: RunState, waits: Mapping[str, str]) -> list[str]:
    """One line per reason jobs wait for a runner, naming the jobs (three reasons at most)."""
    jobs: dict[str, list[str]] = {}
    for job in state.jobs:
        if job.id in waits:
            jobs.setdefault(waits[job.id], []).append(f"{state.stages[job.stage_index].name}/{job.name}")
    return [f":hourglass_flowing_sand: {why} ({', '.join(names)})" for why, names in list(jobs.items())[:3]]


def _run_head(run: Run) -> str:
    """The run's status line and who triggered it, through which door."""
    head = f"{EMOJI.get(run.status, '')} *{run.ref}* — *{run.status}*"
    if run.kind != "deploy":
        head += f" · {run.kind}"
    if run.source_revision:
        head += f" · `{run.source_revision[:12]}`"
    trigger = f"triggered by {who(run.triggered_by)} via {run.trigger_channel}"
    return f"{head}\n{trigger}" + (" (a retry)" if run.retry_of else "")


def _queue_note(run: Run, place: QueueEntry | None) -> str:
    """Why a queued run waits and, when known, its place in line and expected start."""
    waits = f":hourglass_flowing_sand: {run.reason}"
    if place is not None:
        waits += f" · {_ordinal(place.position)} in line"
        if place.eta is not None:
            waits += f", expected to start around {place.eta:%H:%M} UTC"
    return waits


def _stage_line(state: RunState, stage: Stage) -> str:
    """One stage: its status, environment, a waiting gate's approvals so far and how long it took."""
    env = f" → _{stage.environment}_" if stage.environment else ""
    duration = took(stage.started_at, stage.finished_at)
    gate = state.gate_of(stage.index)
    gate_note = ""
    if gate is not None and gate.status is GateStatus.OPEN:
        gate_note = f" — gate waiting ({len(gate.approvals)} of {gate.min_approvals})"
    line = f"{EMOJI.get(stage.status, '')} {stage.name}{env}{gate_note}"
    return line + (f" · {duration}" if duration else "")


def _run_buttons(state: RunState) -> list[Block]:
    """Cancel while the run is live, Retry once it failed or was canceled."""
    run = state.run
    buttons = []
    if run.status not in RUN_TERMINAL:
        buttons.append(
            button(
                "Cancel",
                CANCEL,
                ref_value(state),
                "danger",
                confirm("Cancel this run?", f"{run.ref} stops; running jobs are killed.", "Cancel run"),
            )
        )
    if run.status is RunStatus.VERIFYING:
        buttons += _verify_buttons(state)
    if run.status not in RUN_TERMINAL:
        buttons += _rollout_buttons(state)
    if run.status in (RunStatus.FAILED, RunStatus.CANCELED):
        buttons.append(button("Retry", RETRY, ref_value(state), "primary"))
    return buttons


def _verify_buttons(state: RunState) -> list[Block]:
    """While a deployment is verified, approvers may end it early: it looks good, or roll back."""
    stage = next((s for s in state.stages if s.status is StageStatus.VERIFYING), None)
    env = stage.environment if stage is not None else "the environment"
    back = confirm(
        f"Roll {env} back?",
        f"{state.run.ref} fails and a rollback run deploys the last known-good artifact to {env}.",
        "Roll back",
    )
    value = ref_value(state, stage=stage.index if stage is not None else None)
    return [
        button("Looks good", LOOKS_GOOD, value, "primary"),
        button(f"Roll back {env}"[:75], VERIFY_ROLLBACK, value, "danger", back),
    ]


def _rollout_buttons(state: RunState) -> list[Block]:
    """While a rollout can be steered: Promote (where it can go through), Promote fully, the
    run's Pause or Resume, and Abort (Slack asks why first)."""
    stage = rolling_stage(state)
    rollout = stage.rollout if stage is not None else None
    if stage is None or rollout is None or rollout.status not in STEERABLE:
        return []
    value, run = ref_value(state), state.run
    seen = ref_value(state, step=rollout.step)  # (Promote names the step it was shown at)
    buttons = []
    if can_promote(state, rollout):
        buttons.append(button("Promote", PROMOTE, seen, "primary"))
    fully = confirm(
        "Promote fully?",
        f"{run.ref} skips the steps left: the promote jobs put the new version on the stable servers.",
        "Promote fully",
        "primary",
    )
    buttons.append(button("Promote fully", PROMOTE_FULLY, seen, None, fully))
    if run.status in PAUSABLE:
        buttons.append(button("Pause", PAUSE, value))
    elif run.status is RunStatus.PAUSED:
        buttons.append(button("Resume", RESUME, value))
    buttons.append(button("Abort", ABORT, value, "danger"))
    return buttons


# -- gates ---------------------------------------------------------------------------------------
def gate_card(
    state: RunState,
    gate: Gate,
    live: Deployment | None,
    *,
    artifact: str | None = None,
    groups: Mapping[str, Sequence[str]] | None = None,
    health: EnvironmentHealth | None = None,
    link: str | None = None,
) -> tuple[str, list[Block]]:
    """What the approvers see while a gate waits for them: what will be deployed (``artifact``,
    the run's, when known, and its revision), what is ``live`` in the environment now (and a
    compare link between the two), the gates already passed and the approvals so far. Once
    decided it keeps all of that and shows who decided, when and why instead of the buttons.
    ``groups``: whom a role or group mentions, so approvers are notified (``approvers_line``);
    ``health``: the environment's health now, shown under it while the gate is open; ``link``:
    the run's page in the web view."""
    run = state.run
    stage = state.stages[gate.stage_index]
    target = f" to *{stage.environment}*" if stage.environment else ""
    approvers = approvers_line(gate.approvers, groups)
    if gate.status is GateStatus.OPEN:
        head = f":raised_hand: *{run.ref}* waits for approval before *{stage.name}*{target}"
        # (the top-level text is what a notification shows: it mentions the approvers too)
        summary = f"{run.ref} waits for approval before {stage.name}; approvers: {approvers}"
    else:
        head = (
            f"{EMOJI.get(gate.status, '')} *{run.ref}*: the gate before *{stage.name}*{target} {gate.status}"
        )
        summary = f"{run.ref}: gate {stage.name} {gate.status}"
    lines = [head, f"asked by {who(run.triggered_by)}; approvers: {approvers}"]
    lines.append("deploys " + version(artifact, run.source_revision, f"what {run.ref} builds"))
    if stage.environment:
        if live is None:
            lines.append(f"live in {stage.environment} now: nothing yet")
        else:
            lines.append(f"live in {live.environment} now: {live_line(live)}")
            if (link := compare_link(state, live)) is not None:
                lines.append(link)
    passed = [state.stages[g.stage_index].name for g in state.gates if g.status is GateStatus.APPROVED]
    passed = [name for name in passed if name != stage.name]
    if passed:
        lines.append("gates passed: " + ", ".join(passed))
    if gate.min_approvals > 1:
        line = f"approvals: {len(gate.approvals)} of {gate.min_approvals}"
        if gate.approvals and gate.status is GateStatus.OPEN:
            line += " — so far " + ", ".join(who(a.actor) for a in gate.approvals)
        lines.append(line)
    blocks = [text("\n".join(lines))]
    if health is not None and gate.status is GateStatus.OPEN:
        blocks.append(context(health_line(health)))
    if link:
        blocks.append(context(view_run(link)))
    if gate.status is GateStatus.OPEN:
        value = ref_value(state, gate)
        blocks.append(
            actions(
                f"gate-{gate.id}-{len(gate.approvals)}",
                button("Approve", APPROVE, value, "primary"),
                button("Reject", REJECT, value, "danger"),
            )
        )
    else:
        blocks.append(context(gate_outcome(gate)))
    return summary, blocks


def version(artifact: str | None, revision: str | None, otherwise: str) -> str:
    """What a deployment is, by what is known of it: ```web@1.4.2` (revision `abc1234`)``, one
    of the two, or ``otherwise``."""
    if artifact and revision:
        return f"`{artifact}` (revision `{revision}`)"
    if artifact or revision:
        return f"`{artifact}`" if artifact else f"revision `{revision}`"
    return otherwise


def live_line(live: Deployment) -> str:
    """``web@1.4.2` (revision `abc1234`) · web#41 since … by …``: what runs there, from where."""
    what = version(live.artifact, live.revision, "")
    kind = f" (a {live.kind})" if live.kind != "deploy" else ""
    return (
        (f"{what} · " if what else "")
        + f"{live.pipeline}#{live.run_number}{kind} since {live.finished_at:%Y-%m-%d %H:%M} UTC"
        + f" by {who(live.triggered_by)}"
    )


def compare_link(state: RunState, live: Deployment) -> str | None:
    """The pipeline's ``compare_url`` between the live revision and the run's, when they differ."""
    template, to = state.definition.compare_url, state.run.source_revision
    if not template or not live.revision or not to or live.revision == to:
        return None
    link = template.replace("{from}", live.revision).replace("{to}", to)
    return f"<{link}|compare {live.revision[:7]}…{to[:7]}>"


def gate_reminder(
    state: RunState, gate: Gate, waited_s: float, groups: Mapping[str, Sequence[str]] | None = None
) -> tuple[str, list[Block]]:
    stage = state.stages[gate.stage_index]
    approvers = approvers_line(gate.approvers, groups)
    line = (
        f":alarm_clock: *{state.run.ref}* still waits for approval before *{stage.name}* "
        f"(for {format_duration(waited_s)}); approvers: {approvers}"
    )
    if gate.deadline is not None:
        line += f"; it times out at {gate.deadline:%Y-%m-%d %H:%M} UTC"
    return f"{state.run.ref} still waits for approval; approvers: {approvers}", [text(line)]


def gate_outcome(gate: Gate) -> str:
    """Who decided, when, and why (an approval's comments are its why)."""
    when = f" at {gate.decided_at:%Y-%m-%d %H:%M} UTC" if gate.decided_at else ""
    if gate.status is GateStatus.APPROVED and gate.approvals:
        by = " by " + ", ".join(who(a.actor) for a in gate.approvals)
        said = "; ".join(f"{who(a.actor)}: {a.comment}" for a in gate.approvals if a.comment)
        return f"{EMOJI.get(gate.status, '')} {gate.status}{by}{when}" + (f" — {said}" if said else "")
    by = (
        f" by {who(gate.decided_by)}"
        if gate.decided_by and gate.decided_by not in ("timeout", "check")
        else ""
    )
    reason = f": {gate.reason}" if gate.reason else ""
    return f"{EMOJI.get(gate.status, '')} {gate.status}{by}{when}{reason}"


def job_failed(
    state: RunState,
    job: Job,
    tail: list[str],
    attempt: int | None = None,
    status: str | None = None,
    reason: str | None = None,
) -> tuple[str, list[Block]]:
    """A job failed (``attempt``, with the ``status`` and ``reason`` it failed with; the job's
    own by default): its last log lines and whether the run goes on (the job may fail, or is
    run again). ``settle_failure`` has the buttons to go with it."""
    stage = state.stages[job.stage_index]
    attempt = job.attempt if attempt is None else attempt
    status = status or str(job.status)
    reason = job.reason if reason is None else reason
    summary = f"{state.run.ref}: job {stage.name}/{job.name} {status}"
    line = f":x: *{stage.name}/{job.name}* {status}" + (f" — {reason}" if reason else "")
    if job.attempt > attempt or not job.is_done:
        line += f". Shipyard runs it again (`retries: {job.retries}`)."
    elif job.allow_failure:
        line = ":warning:" + line.removeprefix(":x:") + ". It may fail (`allow_failure`)"
        line += "." if state.run.status in RUN_TERMINAL else ": the run goes on."
    blocks = [text(line)]
    if tail:
        body = "\n".join(tail)[-(SECTION_MAX - 10) :].replace("```", "'''")
        blocks.append(text(f"```{body}```"))
    return summary, blocks


def late_result(
    state: RunState, job: Job, attempt: int, outcome: str, exit_code: int | None
) -> tuple[str, list[Block]]:
    """An attempt declared lost had in fact finished before its server died, and the job was
    run again: both ran, so a person should look at what they did to the target."""
    stage = state.stages[job.stage_index]
    line = (
        f":warning: *{stage.name}/{job.name}* attempt {attempt} had finished ({outcome}, exit "
        f"{exit_code}) before its server died, though it was counted as lost"
    )
    if job.attempt > attempt:
        line += f"; attempt {job.attempt} ran as well."
        where = f" Check *{stage.environment}*: it was deployed to twice." if stage.environment else ""
    else:
        line += "."
        where = ""
    return f"{state.run.ref}: job {stage.name}/{job.name} ran twice", [text(line + where)]


def job_lost(state: RunState, job: Job, attempt: int, reason: str) -> tuple[str, list[Block]]:
    """A runner stopped heartbeating a job: say what happened, what Shipyard did about it, and
    offer what a person may want to do instead (retry, call the run failed, roll back)."""
    stage = state.stages[job.stage_index]
    retried = job.status is not JobStatus.LOST or job.attempt > attempt
    why = reason.removeprefix("lost: ")
    line = f":satellite_antenna: *{stage.name}/{job.name}* (attempt {attempt}) was lost — {why}."
    if retried:
        line += f" Shipyard runs it again (`retries: {job.retries}`)."
    elif state.run.status in RUN_TERMINAL:
        line += " It had no retries left, so the run failed."
    where = f" A deployment to *{stage.environment}* may be half done." if stage.environment else ""
    blocks = [text(line + where)]
    value = ref_value(state)
    if state.run.status in RUN_TERMINAL:
        blocks += settle_failure(state)
    else:
        judged = confirm(
            "Mark the run failed?",
            f"{state.run.ref} stops now and counts as failed in history.",
            "Mark failed",
        )
        blocks.append(
            actions(
                f"lost-{job.id}-{attempt}",
                button("Mark run failed", FAIL, value, "danger", judged),
                button("Cancel run", CANCEL, value),
                *(
                    [
                        button(
                            f"Roll back {stage.environment}"[:75],
                            ROLLBACK_ASK,
                            json.dumps({"env": stage.environment}),
                        )
                    ]
                    if stage.environment
                    else []
                ),
            )
        )
    return f"{state.run.ref}: job {stage.name}/{job.name} lost", blocks


def stuck_run(stuck: Stuck) -> list[Block]:
    """One zombie in ``/deploy runs --stuck``: what it waits for, and a way to end it."""
    run = stuck.state.run
    line = f"{EMOJI.get(run.status, '')} *{run.ref}* {run.status} — {stuck.reason}"
    line += f" (last change {stuck.since:%Y-%m-%d %H:%M} UTC)"
    sure = confirm("Cancel this run?", f"{run.ref} stops now; its running jobs are killed.", "Cancel run")
    return [
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": _clip(line)},
            "accessory": button("Cancel", CANCEL, ref_value(stuck.state), "danger", sure),
        }
    ]


def settle_failure(state: RunState) -> list[Block]:
    """Guided failure, truthful about where the run is: while it still goes on (the failed job
    may fail, or is run again) it can be canceled; once it failed, its failed jobs can be
    retried or the failure ignored (a new run goes on from the next stage), settled here
    instead of by re-triggering everything. A run that succeeded or was canceled offers nothing."""
    value = ref_value(state)
    if state.run.status not in RUN_TERMINAL:
        sure = confirm("Cancel this run?", f"{state.run.ref} stops; running jobs are killed.", "Cancel run")
        return [
            actions(
                f"settle-{state.run.id}-{state.run.version}",
                button("Cancel run", CANCEL, value, "danger", sure),
            )
        ]
    if state.run.status is not RunStatus.FAILED:
        return []
    ignore = confirm(
        "Ignore this failure?",
        f"A new run of {state.run.ref} goes on from the next stage; the failure is recorded "
        "as ignored by you.",
        "Ignore and continue",
    )
    return [
        actions(
            f"settle-{state.run.id}",
            button("Retry failed jobs", RETRY, value, "primary"),
            button("Ignore and continue", IGNORE, value, None, ignore),
        )
    ]


def run_finished(state: RunState) -> tuple[str, list[Block]]:
    run = state.run
    duration = took(run.started_at, run.finished_at)
    line = f"{EMOJI.get(run.status, '')} *{run.ref}* {run.status}" + (f" in {duration}" if duration else "")
    if run.reason and run.status is not RunStatus.SUCCEEDED:
        line += f" — {run.reason}"
    blocks = [text(line)]
    if run.kind != "rollback" and (rollbacks := rollback_buttons(state)):
        blocks.append(actions(f"rollback-{run.id}", *rollbacks))
    return f"{run.ref} {run.status}", blocks


def rollback_buttons(state: RunState) -> list[Block]:
    """A "Roll back" button per environment this run deployed to (or began to): it asks first."""
    envs = dict.fromkeys(s.environment for s in state.stages if s.environment and s.started_at)
    return [button(f"Roll back {env}"[:75], ROLLBACK_ASK, json.dumps({"env": env})) for env in envs if env]
