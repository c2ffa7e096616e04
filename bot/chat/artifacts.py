"""``/deploy artifacts [name]`` and ``/deploy mark-bad name@version "reason"``: what was built,
and stopping a bad build from being deployed again. Registered on import (``bot.chat``)."""

from __future__ import annotations

from bot.backend import now
from bot.chat import block_kit
from bot.chat.parse import Line, did_you_mean
from bot.chat.verbs import VERBS, ChatBackend, Refusal, Reply, Who, verb
from core.access import Action
from core.artifacts import Artifact
from core.errors import NotFound
from storage.artifacts import ArtifactStore

#: how many versions ``/deploy artifacts`` shows
SHOWN = 15


def _when(a: Artifact) -> str:
    return f"{a.created_at:%Y-%m-%d %H:%M} UTC"


def artifact_line(a: Artifact) -> str:
    """One artifact as a chat line: ref, short digest, who registered it and when, bad mark."""
    source = f" from {a.pipeline}" if a.pipeline else ""
    line = f"*{a.ref}* `{a.short_digest}` — {block_kit.who(a.created_by)}{source}, {_when(a)}"
    if not a.bad:
        return "• " + line
    at = f" {a.bad_at:%Y-%m-%d %H:%M} UTC" if a.bad_at else ""
    return f":no_entry_sign: {line} — *marked bad* by {block_kit.who(a.bad_by or '?')}{at}: {a.bad_reason}"


@verb(
    "artifacts",
    "artifacts [name]",
    "recent artifact versions: digest, who registered them, bad marks",
    words=1,
)
async def artifacts(backend: ChatBackend, who: Who, line: Line) -> Reply:
    artifact_store = ArtifactStore(backend.shipyard.store)
    name = line.words[0] if line.words else None
    if name is not None and "@" in name:  # one version, with its uri and metadata
        found = await backend.read(artifact_store.get, name, quick=True)
        if found is None:
            raise Refusal(f"No artifact `{name}`; see `/deploy artifacts {name.partition('@')[0]}`.")
        extra = "".join(f"\n    {k}: {v}" for k, v in found.metadata.items())
        return Reply(f"{artifact_line(found)}\n    `{found.digest}`\n    {found.uri}{extra}")
    page = await backend.read(artifact_store.list, name, None, SHOWN)
    if page.items:
        more = f"\n_…older versions: `GET /api/v1/artifacts?name={name or ''}`_" if page.next_cursor else ""
        return Reply("\n".join(artifact_line(a) for a in page.items) + more)
    if name is None:
        return Reply(
            "No artifacts yet. CI registers them with `POST /api/v1/artifacts`; a job by writing "
            "`artifact=web@1.4.2 digest=sha256:… uri=…` to `$SHIPYARD_OUTPUT`."
        )
    raise Refusal(did_you_mean("artifact", name, await backend.read(artifact_store.names)))


@verb(
    "mark-bad",
    'mark-bad <name@version> "<reason>"',
    "mark an artifact bad: it is never deployed or promoted again",
    Action.APPROVE,
)
async def mark_bad(backend: ChatBackend, who: Who, line: Line) -> Reply:
    reason = " ".join([*line.words[1:], *(f"{k}={v}" for k, v in line.params.items())]).strip()
    if not line.words or not reason:
        raise Refusal(f"Say which artifact and why: `/deploy {VERBS['mark-bad'].usage}`")
    ref = line.words[0]
    artifact_store = ArtifactStore(backend.shipyard.store)
    try:
        marked = await backend.write(
            lambda: artifact_store.mark_bad(ref, reason, by=who.user, now=now(), channel=who.channel)
        )
    except NotFound:
        raise Refusal(f"No artifact `{ref}`. Name it like `web@1.4.2` (see `/deploy artifacts`).") from None
    return Reply(
        f":no_entry_sign: {block_kit.who(who.user)} marked *{marked.ref}* (`{marked.short_digest}`) bad: "
        f"{marked.bad_reason}. It will not be deployed or promoted again.",
        public=True,
    )
