"""The web view's pages, built from the REST API's own views of runs and environments
(``bot.api.schemas``): what a page shows is what ``GET /api/v1/...`` answers."""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from bot.api.common import run_cursor, run_position
from bot.api.runs import verifications_of
from bot.api.schemas import MeasurementOut, RunOut, RunSummary
from bot.backend import now
from bot.web import board
from bot.web.render import Answer, message, page
from bot.web.signin import WEB, Viewer, required
from core.access import Action
from core.assignment import run_artifact
from core.dora import DEFAULT_WINDOW
from core.model import RunState
from core.ports import LogChunk
from core.states import RUN_TERMINAL
from storage.reads import RunFilter

#: runs on the list page
LIST_LIMIT = 50
#: chunks of log read at a time for a page following a job
LOG_CHUNKS = 64
#: a message to that page holds about this much output (browsers parse big ones slowly)
MESSAGE_CHARS = 64 << 10
#: a page shows the last this many characters of a log (the whole of it is a download away)
SHOWN_CHARS = 1 << 20
#: how often a followed log is read again while its run goes on (the runner sends output every
#: half second: a new line reaches the page within about a second)
FOLLOW_S = 0.25
FILTERS = ("pipeline", "status", "environment", "triggered_by")


def _may_read(who: Viewer) -> None:
    if not who.principal.may(Action.READ):
        raise Answer(message("Not allowed", f"{who.name} holds no role that may see runs.", 403, who))


async def runs(request: web.Request) -> web.Response:
    who = await required(request)
    _may_read(who)
    chosen = {k: request.query.get(k, "").strip() for k in FILTERS}
    where = RunFilter(**{k: (v or None) for k, v in chosen.items()})
    try:
        position = run_position(request.query.get("before", ""))
    except ValueError:
        raise Answer(
            message("Not a page", "That link to older runs is broken: start again.", 400, who)
        ) from None
    g = request.app[WEB].gateway
    states = await g.read(g.reads.runs, where, position, LIST_LIMIT + 1)
    older = None
    if len(states) > LIST_LIMIT:
        states = states[:LIST_LIMIT]
        older = "/ui/runs?" + urlencode(
            {**{k: v for k, v in chosen.items() if v}, "before": run_cursor(states[-1])}
        )
    items = [RunSummary.of(s) for s in states]
    pipelines = [p.name for p in await g.read(g.reads.pipelines, None, 500)]
    return page("runs.html", viewer=who, runs=items, chosen=chosen, pipelines=pipelines, older=older)


async def find(request: web.Request, who: Viewer) -> RunState:
    """The run the path names (``/ui/runs/web/42``), or a page saying there is none."""
    pipeline, number = request.match_info["pipeline"], request.match_info["number"]
    g = request.app[WEB].gateway
    state = await g.read(g.reads.run, f"{pipeline}#{number}") if len(number) <= 12 else None
    if state is None:
        raise Answer(message("No such run", f"There is no run {pipeline}#{number}.", 404, who))
    return state


@dataclass(frozen=True, slots=True)
class Bar:
    """One stage or job on the run's timeline, in thousandths of the run's span."""

    label: str
    status: str
    x: int
    width: int
    took: str
    #: a job (indented under its stage)
    job: bool = False


def timeline(run: RunOut, at: datetime) -> list[Bar]:
    """The stages and their jobs as bars to scale, from the run's start to its end (or now)."""
    start = run.started_at or run.created_at
    end = run.finished_at or at
    span = max((end - start).total_seconds(), 0.001)

    def bar(label: str, status: str, began: datetime | None, ended: datetime | None, job: bool) -> Bar:
        if began is None:
            return Bar(label, status, 0, 0, "", job)
        x = max(0, min(int(1000 * (began - start).total_seconds() / span), 998))
        width = min(max(2, int(1000 * ((ended or end) - began).total_seconds() / span)), 1000 - x)
        took = f"{((ended or end) - began).total_seconds():.1f} s"
        return Bar(label, status, x, width, took, job)

    bars = []
    for stage in run.stages:
        bars.append(bar(stage.name, str(stage.status), stage.started_at, stage.finished_at, False))
        for j in stage.jobs:
            bars.append(bar(j.name, str(j.status), j.started_at, j.finished_at, True))
    return bars


def sparklines(measurements: list[MeasurementOut]) -> dict[str, str]:
    """Each check's numeric values over time as SVG polyline points in a 300 x 40 box (a check
    with fewer than two numbers draws none)."""
    series: dict[str, list[tuple[float, float]]] = {}
    for m in measurements:
        try:
            value = float(m.value) if m.value is not None else None
        except ValueError:
            value = None
        if value is not None and math.isfinite(value):
            series.setdefault(m.check, []).append((m.at.timestamp(), value))
    lines = {}
    for check, points in series.items():
        if len(points) < 2:
            continue
        t0, t1 = points[0][0], max(points[-1][0], points[0][0] + 1e-3)
        low, high = min(v for _, v in points), max(v for _, v in points)
        high = high if high > low else low + 1
        lines[check] = " ".join(
            f"{300 * (t - t0) / (t1 - t0):.1f},{38 - 36 * (v - low) / (high - low):.1f}" for t, v in points
        )
    return lines


async def run_page(request: web.Request) -> web.Response:
    who = await required(request)
    _may_read(who)
    state = await find(request, who)
    g = request.app[WEB].gateway
    view = RunOut.of(state, await g.read(g.shipyard.runners.waits, state.jobs, now()))
    built = run_artifact(state)
    analyses = await g.read(verifications_of, g.analyses, state)
    return page(
        "run.html",
        viewer=who,
        run=view,
        bars=timeline(view, datetime.now(UTC)),
        built=built.ref if built is not None else None,
        analyses=analyses,
        sparklines=sparklines,
        base=f"/ui/runs/{state.run.pipeline}/{state.run.number}",
        may_approve=who.principal.may(Action.APPROVE),
        may_control=who.principal.may(Action.CONTROL),
    )


def _job(state: RunState, name: str) -> Any:
    job = next((j for j in state.jobs if f"{state.stages[j.stage_index].name}/{j.name}" == name), None)
    return job


async def job_log(request: web.Request) -> web.StreamResponse:
    """The whole log of a job's latest attempt, as a file (streamed a page at a time)."""
    who = await required(request)
    _may_read(who)
    state = await find(request, who)
    name = f"{request.match_info['stage']}/{request.match_info['job']}"
    job = _job(state, name)
    if job is None:
        raise Answer(message("No such job", f"{state.run.ref} has no job {name}.", 404, who))
    g = request.app[WEB].gateway
    pages = g.shipyard.store.log_pages(job.id)
    filename = f"{state.run.pipeline}-{state.run.number}-{name.replace('/', '-')}.log"
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/plain; charset=utf-8",
            "Content-Disposition": f'attachment; filename="{filename}"',
            "X-Content-Type-Options": "nosniff",
        }
    )
    await response.prepare(request)
    while (chunk := await g.read(next, pages, None)) is not None:
        await response.write("".join(c.text for c in chunk).encode())
    await response.write_eof()
    return response


def _messages(chunks: list[LogChunk]) -> bytes:
    """``chunks`` as ``text`` messages of about ``MESSAGE_CHARS`` each, every one with its last
    chunk's number as its id."""
    out, texts, size = [], [], 0
    for i, c in enumerate(chunks):
        texts.append(c.text)
        size += len(c.text)
        if size >= MESSAGE_CHARS or i == len(chunks) - 1:
            out.append(f"id: {c.seq}\nevent: text\ndata: {json.dumps(''.join(texts))}\n\n")
            texts, size = [], 0
    return "".join(out).encode()


async def job_log_events(request: web.Request) -> web.StreamResponse:
    """A job's log as Server-Sent Events while the page is open: ``text`` messages (the output,
    each with the last chunk's number as its id, so a reconnect with ``Last-Event-ID`` goes on
    from there), one ``skipped`` first when only the last MiB is shown, and ``end`` once the run
    has finished and everything was sent."""
    who = await required(request)
    _may_read(who)
    state = await find(request, who)
    job = _job(state, f"{request.match_info['stage']}/{request.match_info['job']}")
    if job is None:
        raise Answer(message("No such job", f"{state.run.ref} has no such job.", 404, who))
    g = request.app[WEB].gateway
    store = g.shipyard.store
    last = request.headers.get("Last-Event-ID", "")
    after = int(last) if last.isascii() and last.isdigit() and len(last) < 19 else 0
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    if after == 0:  # (the page's first look: a long log is shown from its last part)
        after, skipped = await g.read(store.log_tail_start, job.id, SHOWN_CHARS)
        if skipped:
            await response.write(f"event: skipped\ndata: {skipped}\n\n".encode())
    finished = False
    while True:
        chunk = await g.read(next, store.log_pages(job.id, None, LOG_CHUNKS, after), [])
        if chunk:
            after = chunk[-1].seq
            await response.write(_messages(chunk))
            continue
        if finished:  # (read before the last look at the log: nothing came after it)
            await response.write(b"event: end\ndata: {}\n\n")
            break
        finished = (await g.read(g.reads.run, state.run.id, quick=True)).run.status in RUN_TERMINAL  # type: ignore[union-attr]
        if not finished:
            await asyncio.sleep(FOLLOW_S)
    await response.write_eof()
    return response


async def environments(request: web.Request) -> web.Response:
    """The board: what runs where, health, locks, queues, freezes, history and DORA's keys."""
    who = await required(request)
    _may_read(who)
    found = await board.rows(request.app[WEB].gateway, now())
    may_act = who.principal.may(Action.TRIGGER) or who.principal.may(Action.CONTROL)
    return page("environments.html", viewer=who, environments=found, window=DEFAULT_WINDOW, may_act=may_act)
