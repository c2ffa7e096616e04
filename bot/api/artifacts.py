"""Artifacts: what CI systems register and deployments ship. A version names one content
forever: a repeat with the same digest answers ``200`` with the registered artifact, another
digest ``409`` naming the registered one, a moving tag as a version ``422`` saying why.

The documented patterns of ``name``, ``version``, ``digest`` and ``uri`` are the rules of
``core.artifacts``; the handler applies those, so a refusal explains itself instead of quoting
a regular expression."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from aiohttp import web
from pydantic import BaseModel, Field

from bot.api.common import reply
from bot.api.gateway import gw
from bot.api.problems import Problem
from bot.api.routing import PREFIX, Call
from bot.api.schemas import NEXT, Page, QueryModel, Strict
from bot.api.spec import API
from bot.backend import now
from core import artifacts as art
from core.access import Action
from core.artifacts import Artifact, DigestConflict
from storage.artifacts import ArtifactStore

#: what ``core.artifacts`` accepts, as JSON Schema patterns (documented, checked by the handler)
VERSION_PATTERN = r"^([A-Za-z0-9][A-Za-z0-9._+-]*)?[0-9][A-Za-z0-9._+-]*$"
DIGEST_PATTERN = r"^[sS][hH][aA](256:[0-9a-fA-F]{64}|512:[0-9a-fA-F]{128})$"

MetaKey = Annotated[str, Field(pattern=art.METADATA_KEY_RE.pattern)]
MetaValue = Annotated[str, Field(max_length=art.METADATA_VALUE_MAX)]


class ArtifactIn(Strict):
    """Register an artifact: an immutable version of a name, with the digest of its content."""

    name: str = Field(max_length=63, json_schema_extra={"pattern": art.NAME_RE.pattern})
    version: str = Field(
        max_length=art.VERSION_MAX,
        json_schema_extra={"pattern": VERSION_PATTERN},
        description="an immutable identifier such as 1.4.2 or a commit sha; never latest, main or a branch",
    )
    digest: str = Field(
        max_length=140,
        json_schema_extra={"pattern": DIGEST_PATTERN},
        description="sha256:<64 hex> or sha512:<128 hex>",
    )
    uri: str = Field(
        max_length=art.URI_MAX,
        json_schema_extra={"pattern": art.URI_RE.pattern},
        description="where to fetch it, e.g. oci://registry.example.com/web@sha256:…",
    )
    metadata: dict[MetaKey, MetaValue] = Field(
        default_factory=dict,
        max_length=art.METADATA_MAX_KEYS,
        json_schema_extra={"additionalProperties": False},
        description="key=value pairs kept with the artifact (commit, build URL, …)",
    )


class MarkBadIn(Strict):
    reason: str = Field(
        min_length=1,
        max_length=art.REASON_MAX,
        pattern=art.VISIBLE.pattern,
        description="why; shown wherever it is refused",
    )


class ArtifactOut(BaseModel):
    id: str
    ref: str = Field(description="name@version")
    name: str
    version: str
    digest: str
    uri: str
    metadata: dict[str, str]
    run_id: str | None = Field(description="the run whose job registered it; null if registered over the API")
    pipeline: str | None
    created_by: str
    created_at: datetime
    status: Literal["registered", "bad"]
    bad_reason: str | None
    bad_by: str | None
    bad_at: datetime | None

    @classmethod
    def of(cls, a: Artifact) -> ArtifactOut:
        return cls(
            id=a.id,
            ref=a.ref,
            name=a.name,
            version=a.version,
            digest=a.digest,
            uri=a.uri,
            metadata=dict(a.metadata),
            run_id=a.run_id,
            pipeline=a.pipeline,
            created_by=a.created_by,
            created_at=a.created_at,
            status="bad" if a.bad else "registered",
            bad_reason=a.bad_reason,
            bad_by=a.bad_by,
            bad_at=a.bad_at,
        )


class ArtifactPage(Page):
    items: list[ArtifactOut]


class ArtifactsQuery(QueryModel):
    name: str | None = Field(
        None, max_length=63, pattern=art.NAME_RE.pattern, description="only versions of this artifact"
    )
    limit: int = Field(50, ge=1, le=200)
    cursor: str | None = Field(None, pattern=r"^([0-9]{1,18}\.[0-9a-f-]{1,36})?$", description=NEXT)


def _artifact_store(call: Call) -> ArtifactStore:
    return ArtifactStore(gw(call).shipyard.store)


def _location(a: Artifact) -> dict[str, str]:
    return {"Location": f"{PREFIX}/artifacts/{a.id}"}


@API.op(
    "POST",
    "/artifacts",
    summary="Register an artifact",
    action=Action.TRIGGER,
    tag="artifacts",
    body=ArtifactIn,
    responses={
        201: ("registered", ArtifactOut),
        200: ("this version was registered with this digest before: the registered artifact", ArtifactOut),
    },
    headers={201: {"Location": "/api/v1/artifacts/{id}"}, 200: {"Location": "/api/v1/artifacts/{id}"}},
)
async def register_artifact(call: Call) -> web.Response:
    """Deployers (CI systems) and admins. The same name, version and digest again is a harmless
    repeat (200); another digest for a registered version is 409; a moving tag such as
    ``latest`` or a branch name as the version is 422."""
    body: ArtifactIn = call.body
    spec = art.make_spec(body.name, body.version, body.digest, body.uri, body.metadata)
    artifact_store = _artifact_store(call)
    try:
        artifact, created = await gw(call).write(
            lambda: artifact_store.register(spec, by=call.principal.name, now=now())
        )
    except DigestConflict as exc:
        raise Problem(
            409, exc.message, registered_digest=exc.registered.digest, artifact_id=exc.registered.id
        ) from None
    return reply(ArtifactOut.of(artifact), 201 if created else 200, _location(artifact))


@API.op(
    "GET",
    "/artifacts",
    summary="List artifacts, newest first",
    action=Action.READ,
    tag="artifacts",
    query=ArtifactsQuery,
    responses={200: ("a page of artifacts", ArtifactPage)},
)
async def list_artifacts(call: Call) -> web.Response:
    q: ArtifactsQuery = call.query
    page = await gw(call).read(_artifact_store(call).list, q.name, q.cursor or None, q.limit)
    return reply(ArtifactPage(items=[ArtifactOut.of(a) for a in page.items], next_cursor=page.next_cursor))


@API.op(
    "GET",
    "/artifacts/{artifact_id}",
    summary="An artifact, by id or name@version",
    action=Action.READ,
    tag="artifacts",
    responses={200: ("the artifact", ArtifactOut)},
)
async def get_artifact(call: Call) -> web.Response:
    ref = call.params["artifact_id"]
    found = await gw(call).read(_artifact_store(call).get, ref, quick=True)
    if found is None:
        raise art.not_found(ref)
    return reply(ArtifactOut.of(found))


@API.op(
    "POST",
    "/artifacts/{artifact_id}/mark-bad",
    summary="Mark an artifact bad: it is never deployed or promoted again",
    action=Action.APPROVE,
    tag="artifacts",
    body=MarkBadIn,
    responses={200: ("the artifact, marked bad", ArtifactOut)},
)
async def mark_artifact_bad(call: Call) -> web.Response:
    """Approvers and admins. Final: an artifact marked bad stays bad; marking it again is 409
    saying who marked it, when and why. Audited with the reason."""
    body: MarkBadIn = call.body
    artifact_store = _artifact_store(call)
    call.audited = True  # the registry audits this, accepted or refused, with the reason
    marked = await gw(call).write(
        lambda: artifact_store.mark_bad(
            call.params["artifact_id"], body.reason, by=call.principal.name, now=now(), channel="rest"
        )
    )
    return reply(ArtifactOut.of(marked))
