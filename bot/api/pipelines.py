"""Pipelines: list, read, their versions; admins create, update and archive them."""

from __future__ import annotations

from aiohttp import web

from bot.api.common import id_cursor, reply
from bot.api.gateway import gw
from bot.api.problems import Problem
from bot.api.routing import Call
from bot.api.schemas import PageQuery, PipelineOut, PipelinePage, PipelinesQuery, VersionOut, VersionPage
from bot.api.spec import API
from core.access import Action
from core.definition import PipelineDef, parse_pipeline
from core.errors import DefinitionError
from core.ports import PipelineVersion
from core.strategies import strategy_problems
from storage.reads import PipelineInfo

DEFINITION_TYPES = ("application/json", "application/yaml", "application/x-yaml", "text/yaml")


def _out(info: PipelineInfo) -> PipelineOut:
    d = info.latest.definition
    return PipelineOut(
        id=info.name,
        name=info.name,
        description=d.description,
        archived=info.archived,
        created_at=info.created_at,
        latest_version=VersionOut.of(info.latest),
        definition=d,
    )


async def _info(call: Call, name: str) -> PipelineInfo:
    info = await gw(call).read(gw(call).reads.pipeline, name)
    if info is None:
        known = await gw(call).read(gw(call).reads.pipelines, None, 20)
        names = ", ".join(p.name for p in known) or "none yet"
        raise Problem(404, f"no pipeline {name!r} (pipelines: {names})")
    return info


@API.op(
    "GET",
    "/pipelines",
    summary="List pipelines",
    action=Action.READ,
    tag="pipelines",
    query=PipelinesQuery,
    responses={200: ("a page of pipelines, by name", PipelinePage)},
)
async def list_pipelines(call: Call) -> web.Response:
    q: PipelinesQuery = call.query
    found = await gw(call).read(gw(call).reads.pipelines, q.cursor or None, q.limit + 1, q.archived)
    more = len(found) > q.limit
    found = found[: q.limit]
    return reply(PipelinePage(items=[_out(p) for p in found], next_cursor=found[-1].name if more else None))


@API.op(
    "GET",
    "/pipelines/{pipeline_id}",
    summary="A pipeline and its current definition",
    action=Action.READ,
    tag="pipelines",
    responses={200: ("the pipeline", PipelineOut)},
)
async def get_pipeline(call: Call) -> web.Response:
    return reply(_out(await _info(call, call.params["pipeline_id"])))


@API.op(
    "GET",
    "/pipelines/{pipeline_id}/versions",
    summary="A pipeline's versions, newest first",
    action=Action.READ,
    tag="pipelines",
    query=PageQuery,
    responses={200: ("a page of versions", VersionPage)},
)
async def list_versions(call: Call) -> web.Response:
    info = await _info(call, call.params["pipeline_id"])
    q: PageQuery = call.query
    found: list[PipelineVersion] = await gw(call).read(
        gw(call).reads.versions, info.name, id_cursor(q.cursor), q.limit + 1
    )
    more = len(found) > q.limit
    found = found[: q.limit]
    cursor = str(found[-1].version) if more else None
    return reply(VersionPage(items=[VersionOut.of(v) for v in found], next_cursor=cursor))


async def _definition(call: Call) -> tuple[PipelineDef, str]:
    raw: bytes = call.body
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Problem(400, "the definition must be UTF-8 text") from None
    if not text.strip():
        raise Problem(422, "send the pipeline definition (YAML or JSON) as the body")
    try:
        definition = parse_pipeline(text, "body")
    except DefinitionError as exc:
        raise Problem(
            422,
            "invalid pipeline definition: " + "; ".join(exc.problems),
            errors=[{"problem": p} for p in exc.problems],
        ) from None
    if "\\u0000" in definition.model_dump_json():
        raise Problem(422, "NUL characters are not allowed in a pipeline definition")
    return definition, text


async def _register(call: Call, definition: PipelineDef, text: str) -> tuple[PipelineOut, bool]:
    g = gw(call)
    problems = strategy_problems(definition, g.shipyard.service.environments)
    if problems:
        raise Problem(
            422,
            "invalid pipeline definition: " + "; ".join(problems),
            errors=[{"problem": p} for p in problems],
        )
    _, created = await g.write(g.shipyard.service.register_pipeline, definition, text, None)
    info = await g.read(g.reads.pipeline, definition.name)
    assert info is not None
    return _out(info), created


VERSION_HEADERS = {"Location": "/api/v1/pipelines/{pipeline_id}"}


@API.op(
    "POST",
    "/pipelines",
    summary="Create a pipeline",
    action=Action.MANAGE,
    tag="pipelines",
    body=PipelineDef,
    raw_body=DEFINITION_TYPES,
    responses={201: ("created as version 1 (or as the next version of an archived pipeline)", PipelineOut)},
    headers={201: VERSION_HEADERS},
)
async def create_pipeline(call: Call) -> web.Response:
    """The definition, as JSON or YAML, in the format of the pipeline files."""
    definition, text = await _definition(call)
    existing = await gw(call).read(gw(call).reads.pipeline, definition.name)
    if existing is not None and not existing.archived:
        raise Problem(
            409, f"pipeline {definition.name!r} exists; PUT /api/v1/pipelines/{definition.name} to change it"
        )
    if existing is not None:  # archived: posting it again restores it
        await gw(call).write(gw(call).shipyard.service.set_archived, definition.name, False)
    out, _ = await _register(call, definition, text)
    return reply(out, 201, {"Location": f"/api/v1/pipelines/{out.name}"})


@API.op(
    "PUT",
    "/pipelines/{pipeline_id}",
    summary="Change a pipeline (a new immutable version)",
    action=Action.MANAGE,
    tag="pipelines",
    body=PipelineDef,
    raw_body=DEFINITION_TYPES,
    responses={
        200: (
            "the pipeline; its latest version is the one sent (unchanged if the content was the same)",
            PipelineOut,
        ),
        201: ("a new pipeline was created", PipelineOut),
    },
)
async def put_pipeline(call: Call) -> web.Response:
    """Runs in flight keep the version they started with. A pipeline loaded from a file in
    SHIPYARD_PIPELINES_DIR belongs to that file and cannot be changed here."""
    name = call.params["pipeline_id"]
    definition, text = await _definition(call)
    if definition.name != name:
        raise Problem(422, f"the definition is named {definition.name!r} but the URL names {name!r}")
    existing = await gw(call).read(gw(call).reads.pipeline, name)
    if existing is not None and existing.latest.source_path is not None:
        raise Problem(
            409, f"pipeline {name!r} is defined by the file {existing.latest.source_path}; change the file"
        )
    out, _ = await _register(call, definition, text)
    return reply(out, 201 if existing is None else 200)


@API.op(
    "DELETE",
    "/pipelines/{pipeline_id}",
    summary="Archive a pipeline",
    action=Action.MANAGE,
    tag="pipelines",
    responses={200: ("archived: no new runs; its runs and versions stay readable", PipelineOut)},
)
async def archive_pipeline(call: Call) -> web.Response:
    info = await _info(call, call.params["pipeline_id"])
    g = gw(call)
    await g.write(g.shipyard.service.set_archived, info.name, True)
    archived = await g.read(g.reads.pipeline, info.name)
    assert archived is not None
    return reply(_out(archived))
