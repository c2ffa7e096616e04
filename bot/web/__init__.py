"""The web view under ``/ui/`` (docs/web.md): runs, a run's timeline, gates and live logs, the
environment board, and the actions Slack has, for what does not fit in a message.

Server-rendered pages (``bot.web.render``), no build step and nothing loaded from elsewhere;
signing in with a one-time link from ``/deploy login`` or an API token (``bot.web.signin``);
every action a command through the same entry point as every other channel
(``bot.web.actions``)."""

from __future__ import annotations

from aiohttp import web

from bot.api.gateway import ApiGateway
from bot.web import actions, environment_actions, logs, pages, signin
from bot.web.render import HERE, answers


async def _home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/ui/runs")


def setup(app: web.Application, gateway: ApiGateway) -> None:
    ui = web.Application(middlewares=[answers])
    ui[signin.WEB] = signin.WebState(gateway)
    run = "/runs/{pipeline}/{number:[0-9]+}"
    job = run + "/jobs/{stage}/{job}"
    ui.add_routes(
        [
            web.get("/", _home),
            web.get("/sign-in", signin.sign_in_page),
            web.post("/sign-in", signin.sign_in_with_token),
            web.get("/login/{secret}", signin.login_link),
            web.post("/login/{secret}", signin.use_login_link),
            web.post("/sign-out", signin.sign_out),
            web.get("/runs", pages.runs),
            web.get(run, pages.run_page),
            web.get(job + "/log", logs.job_log),
            web.get(job + "/log.events", logs.job_log_events),
            web.post(run + "/{action}", actions.act),
            web.get("/environments", pages.environments),
            web.post("/environments/{env}/rollback", environment_actions.rollback),
            web.post("/environments/{env}/promote", environment_actions.promote),
            web.post("/environments/{env}/lock", environment_actions.lock),
            web.post("/environments/{env}/unlock", environment_actions.unlock),
            web.static("/static", HERE / "static", append_version=True),
        ]
    )
    app.add_subapp("/ui", ui)
