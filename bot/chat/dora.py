"""DORA's four keys in chat: ``/deploy dora production [30d]`` and a line per environment in
App Home. The figures come from ``core.dora``; each says how many deployments it rests on."""

from __future__ import annotations

from datetime import timedelta

from bot.backend import now
from bot.chat import block_kit
from bot.chat.parse import Line
from bot.chat.verbs import ChatBackend, Refusal, Reply, Who, _usage, verb
from core.dora import DEFAULT_WINDOW, FourKeys, four_keys, parse_window
from core.duration import format_duration


def _time(seconds: float | None) -> str:
    return "n/a" if seconds is None else format_duration(seconds)


def figures(keys: FourKeys) -> list[str]:
    """The four keys, one line each, with what each rests on."""
    f, lead, cfr, ttr = (
        keys.deployment_frequency,
        keys.lead_time,
        keys.change_failure_rate,
        keys.time_to_restore,
    )
    rate = "n/a" if cfr.rate is None else f"{cfr.rate:.0%}"
    causes = ", ".join(
        f"{n} {what}"
        for n, what in (
            (cfr.failed, "failed"),
            (cfr.failed_verification, "failed verification"),
            (cfr.rolled_back, "rolled back"),
            (cfr.marked_bad, "marked bad"),
        )
        if n
    )
    return [
        f"*Deployment frequency*: {f.per_week:.1f} a week ({f.deployments} successful deployments)",
        f"*Lead time for changes*: median {_time(lead.median_s)} ({lead.deployments} deployments with a "
        f"known commit time, {lead.unknown} unknown)",
        f"*Change failure rate*: {rate} ({cfr.failures} of {cfr.deployments} deployments"
        + (f": {causes})" if causes else ")"),
        f"*Time to restore*: median {_time(ttr.median_s)} ({ttr.restores} restores of "
        f"{ttr.deployments} failed deployments"
        + (f", {ttr.unrestored} not restored yet)" if ttr.unrestored else ")"),
    ]


def home_line(keys: FourKeys, window: str = DEFAULT_WINDOW) -> str:
    """The App Home line under an environment, each figure with what it rests on:
    ``:bar_chart: 30d: 1.4/week (6) · lead 1h15m (4 of 6) · failure rate 20% (5) · restore 1h (3)``."""
    f, lead, cfr, ttr = (
        keys.deployment_frequency,
        keys.lead_time,
        keys.change_failure_rate,
        keys.time_to_restore,
    )
    rate = "n/a" if cfr.rate is None else f"{cfr.rate:.0%}"
    return (
        f":bar_chart: {window}: {f.per_week:.1f}/week ({f.deployments}) · lead {_time(lead.median_s)} "
        f"({lead.deployments} of {lead.deployments + lead.unknown}) · failure rate {rate} "
        f"({cfr.deployments}) · restore {_time(ttr.median_s)} ({ttr.restores})"
    )


async def read_keys(backend: ChatBackend, env: str, window: timedelta) -> FourKeys:
    until = now()
    since = until - window
    facts = await backend.read(backend.reads.dora_facts, env, since, until)
    return four_keys(env, facts, since, until)


@verb(
    "dora",
    "dora <environment> [window]",
    "DORA's four keys for an environment (window: 30d unless given)",
    words=2,
)
async def dora(backend: ChatBackend, who: Who, line: Line) -> Reply:
    if not line.words:  # (more than two words: refused by dispatch, as for every verb)
        raise Refusal(_usage("dora"))
    env, text = line.words[0], line.words[1] if len(line.words) > 1 else DEFAULT_WINDOW
    try:
        window = parse_window(text)
    except ValueError as e:
        raise Refusal(f"{e}. {_usage('dora')}") from None
    names = await backend.read(backend.reads.environment_names)
    if env not in names:
        raise Refusal(
            f"No environment `{env}` (environments: {', '.join(names) or 'none yet'}). {_usage('dora')}"
        )
    keys = await read_keys(backend, env, window)
    rows = figures(keys)
    head = f"DORA's four keys for *{env}* over {text}"
    blocks = [
        block_kit.text(head),
        block_kit.text("\n".join(rows)),
        block_kit.context("Definitions: docs/dora.md"),
    ]
    return Reply("\n".join([head, *rows]), blocks)
