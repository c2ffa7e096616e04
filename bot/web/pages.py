"""The web view's pages, built from the REST API's own views of runs and environments
(``bot.api.schemas``): what a page shows is what ``GET /api/v1/...`` answers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
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
from storage.reads import RunFilter

#: runs on the list page
LIST_LIMIT = 50
FILTERS = ("pipeline", "status", "environment", "triggered_by")


def may_read(who: Viewer) -> None:
    if not who.principal.may(Action.READ):
        raise Answer(message("Not allowed", f"{who.name} holds no role that may see runs.", 403, who))


async def runs(request: web.Request) -> web.Response:
    who = await required(request)
    may_read(who)
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
    may_read(who)
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


async def environments(request: web.Request) -> web.Response:
    """The board: what runs where, health, locks, queues, freezes, history and DORA's keys."""
    who = await required(request)
    may_read(who)
    found = await board.rows(request.app[WEB].gateway, now())
    may_act = who.principal.may(Action.TRIGGER) or who.principal.may(Action.CONTROL)
    return page("environments.html", viewer=who, environments=found, window=DEFAULT_WINDOW, may_act=may_act)
