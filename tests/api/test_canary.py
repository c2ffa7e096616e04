"""Canary rollouts end to end: a served Shipyard drives a real nginx in front of two real
versions of a service. Traffic follows the steps (2,000 requests per step land on the canary
within ±3 points of its weight), an open-ended pause is a gate (not the run's author; an
approver promotes it), promotion returns all traffic to stable after the promote jobs, and a
person's abort puts all traffic back on stable before the abort jobs run and the run ends."""

from __future__ import annotations

import asyncio
import html
import time
from pathlib import Path
from typing import Any

from core.runtime.routers import router_for
from tests.api.conftest import Api, StartApi, assert_problem, parse_sse
from tests.api.test_web import Browser, web_page
from tests.pipelines import APPROVER_PAUSE, VERSION_PARAMETER, built_and_deployed, canary, one_job
from tests.prometheus import Prometheus
from tests.routing import Nginx, send

#: the promote and abort jobs leave a mark the test reads (the real jobs would deploy)
CANARY = canary(
    "web",
    [
        "set_weight: 10",
        "pause: {duration: 1s}",
        "set_weight: 50",
        APPROVER_PAUSE,
        "set_weight: 100",
    ],
    promote='"echo promoted=$SHIPYARD_PARAM_VERSION >> $SHIPYARD_OUTPUT"',
    abort='"echo removed=yes >> $SHIPYARD_OUTPUT"',
    head=VERSION_PARAMETER,
)


def _environments(nginx: Nginx) -> dict[str, Any]:
    return {
        "production": {
            "routers": {"web": nginx.router().model_dump(mode="json", exclude_none=True)},
        }
    }


def _rollout(run: dict[str, Any]) -> dict[str, Any]:
    rollout = run["rollout"]
    assert rollout is not None, (run["status"], run["reason"], run["stages"])
    return dict(rollout)


async def _share(nginx: Nginx) -> float:
    tally = await send(nginx.port, 2000)
    assert tally.failures == [], tally.failures[:3]
    return tally.share("canary")


async def test_a_canary_moves_real_traffic_step_by_step_and_is_promoted(
    db_url: str, start_api: StartApi, nginx: Nginx
) -> None:
    api = await start_api(db_url, {"web": CANARY}, environments=_environments(nginx))
    run = await api.trigger("web", parameters={"version": "2.0.0"})

    waiting = await api.wait(run["id"], lambda r: r["status"] == "waiting", timeout=30)
    rollout = _rollout(waiting)
    assert (rollout["status"], rollout["step"], rollout["steps"]) == ("waiting", 4, 5), rollout
    assert rollout["desired"] == rollout["applied"] == {"stable": 50, "canary": 50}
    assert abs(await _share(nginx) - 50) <= 3
    page = await web_page(api, f"/ui/runs/web/{run['number']}")  # the web view says the same
    assert "step 4 of 5" in page and "stable 50 %" in page and "canary 50 %" in page

    # the pause is a gate: not who triggered the run, and only approvers
    mine = await api.post(f"/runs/{run['id']}/rollout/promote", who="deployer", json={})
    assert_problem(mine, 403)
    promoted = await api.post(f"/runs/{run['id']}/rollout/promote", who="approver", json={"comment": "ok"})
    assert promoted.status == 200, promoted.json

    done = await api.wait(run["id"], timeout=30)
    assert done["status"] == "succeeded", done["reason"]
    rollout = _rollout(done)
    assert rollout["status"] == "promoted" and rollout["applied"] == {"stable": 100, "canary": 0}
    jobs = {j["name"]: j for j in done["stages"][0]["jobs"]}
    assert jobs["promote"]["status"] == "succeeded" and jobs["promote"]["outputs"] == {"promoted": "2.0.0"}
    assert jobs["remove-canary"]["status"] in ("pending", "skipped", "canceled")
    assert await _share(nginx) == 0  # the new version is stable now: the canary takes nothing

    events = parse_sse((await api.stream(f"/runs/{run['id']}/events")).text)
    steps = [e["data"]["data"]["canary"] for e in events if e["event"] == "rollout.weights_applied"]
    assert steps == [10, 50, 100, 0], steps


async def test_an_abort_puts_all_traffic_back_on_stable_then_runs_the_abort_jobs(
    db_url: str, start_api: StartApi, nginx: Nginx
) -> None:
    api = await start_api(db_url, {"web": CANARY}, environments=_environments(nginx))
    run = await api.trigger("web", parameters={"version": "2.0.0"})
    await api.wait(run["id"], lambda r: r["status"] == "waiting", timeout=30)
    assert abs(await _share(nginx) - 50) <= 3

    aborted = await api.post(
        f"/runs/{run['id']}/rollout/abort", who="approver", json={"reason": "latency looks off"}
    )
    assert aborted.status == 200, aborted.json
    done = await api.wait(run["id"], timeout=30)
    assert done["status"] == "canceled"
    assert done["reason"] == "rollout aborted by approver: latency looks off"
    rollout = _rollout(done)
    assert rollout["status"] == "aborted" and rollout["applied"] == {"stable": 100, "canary": 0}
    jobs = {j["name"]: j for j in done["stages"][0]["jobs"]}
    assert jobs["remove-canary"]["outputs"] == {"removed": "yes"}
    assert jobs["promote"]["status"] != "succeeded"
    assert await _share(nginx) == 0

    again = await api.post(f"/runs/{run['id']}/rollout/abort", who="approver", json={})
    assert_problem(again, 409, "no rollout under way")


ERRORS = 'sum(rate(http_requests_total{code=~"5.."}[5s])) / sum(rate(http_requests_total[5s]))'
ANALYZED = """name: web
parameters:
  - {name: version, required: true}
stages:
  - name: production
    environment: production
    strategy:
      canary:
        router: web
        steps:
          - set_weight: 20
          # (an error rate that rises passes through the band between pass_if and fail_if)
          - analysis: {checks: [error-rate], duration: 60s, failure_limit: 2, inconclusive_limit: 3}
          - set_weight: 100
        abort: [{name: remove-canary, run: "true"}]
    jobs:
      - {name: deploy-canary, run: "true"}
"""


async def test_a_canary_whose_service_fails_is_aborted_by_its_analysis(
    db_url: str, start_api: StartApi, nginx: Nginx, prometheus: Prometheus
) -> None:
    canary = nginx.versions.canary
    await asyncio.to_thread(prometheus.scrape, canary.target)
    await asyncio.to_thread(prometheus.wait_for, ERRORS, lambda v: v is not None and v < 0.01)
    environments = _environments(nginx)
    environments["production"]["checks"] = {
        "error-rate": {
            "prometheus": {"url": prometheus.url, "query": ERRORS},
            "fail_if": "> 0.05",
            "pass_if": "< 0.01",
            "interval": "1s",
        }
    }
    api = await start_api(db_url, {"web": ANALYZED}, environments=environments)
    run = await api.trigger("web", parameters={"version": "2.0.0"})
    measuring = await api.wait(
        run["id"], lambda r: (r["rollout"] or {}).get("analysis") is not None, timeout=30
    )
    assert _rollout(measuring)["applied"] == {"stable": 80, "canary": 20}

    analyses = await api.db(_analyses, api)
    assert analyses, "the analysis step started no analysis"
    canary.fail()  # the canary starts answering 5xx
    await asyncio.to_thread(prometheus.wait_for, ERRORS, lambda v: v is not None and v > 0.05)
    seen = time.monotonic()
    done = await api.wait(run["id"], timeout=20)
    took = time.monotonic() - seen
    assert done["status"] == "failed"
    assert done["reason"].startswith("analysis at step 2 (canary at 20%) failed: error-rate = "), done
    assert "twice" in done["reason"], done["reason"]
    assert _rollout(done)["applied"] == {"stable": 100, "canary": 0}
    assert took <= 1 * 2 + 2, took  # interval x failure_limit + 2 s
    assert await _share(nginx) == 0
    measured = (await api.get(f"/runs/{run['id']}/verification")).json["items"]
    assert [(a["status"]) for a in measured] == ["failed"]
    page = await web_page(api, f"/ui/runs/web/{run['number']}")  # each measurement, on the run's page
    last = measured[0]["measurements"][-1]
    assert "Measurements" in page and html.escape(last["detail"]) in page and " &gt; 0.05" in page
    assert "error-rate over time" in page and "<polyline points=" in page  # the error rate, drawn


async def test_a_rollout_that_does_not_fit_the_configuration_is_refused_naming_the_field(
    db_url: str, start_api: StartApi, nginx: Nginx
) -> None:
    api = await start_api(db_url, {}, environments=_environments(nginx))
    cases = {
        "router: web": ("router: nope", "has no router 'nope' (routers: web)"),
        "- set_weight: 50": ("- set_weight: 5", "set_weight 5 does not increase"),
        "- set_weight: 100": ("- set_weight: 101", "less than or equal to 100"),
        APPROVER_PAUSE: ("pause: {}", "names approvers"),
    }
    fresh = CANARY.replace("name: web", "name: fresh")
    for old, (new, words) in cases.items():
        reply = await api.post(
            "/pipelines", data=fresh.replace(old, new), headers={"Content-Type": "application/yaml"}
        )
        assert_problem(reply, 422, words)
    analysis = fresh.replace("- pause: {duration: 1s}", "- analysis: {checks: [latency], duration: 1m}")
    reply = await api.post("/pipelines", data=analysis, headers={"Content-Type": "application/yaml"})
    assert_problem(reply, 422, "production declares no check 'latency'")


async def test_a_change_nginx_refuses_fails_the_rollout_with_nginx_words_and_traffic_stays(
    db_url: str, start_api: StartApi, nginx: Nginx
) -> None:
    environments = _environments(nginx)
    # the canary's pool names a server nginx refuses: the first change fails its nginx -t
    environments["production"]["routers"]["web"]["pools"]["canary"] = ["127.0.0.1:99999"]
    api = await start_api(db_url, {"web": CANARY}, environments=environments)
    run = await api.trigger("web", parameters={"version": "2.0.0"})
    done = await api.wait(run["id"], timeout=30)
    assert done["status"] == "failed"
    assert done["reason"].startswith("router web failed: "), done["reason"]
    assert 'invalid port in upstream "127.0.0.1:99999"' in done["reason"]
    assert done["reason"].endswith("no weights were confirmed yet: traffic stays as the router had it")
    assert _rollout(done)["status"] == "failed"
    assert await _share(nginx) == 0  # still all on stable, as nginx had it
    # the web view does not show the weights asked for as if they were the traffic
    page = await web_page(api, f"/ui/runs/web/{run['number']}")
    assert "it has confirmed no weights of this rollout" in page
    assert "canary 10 %" not in page and "stable 90 %" not in page


def _analyses(api: Api) -> list[Any]:
    with api.store.reading() as tx:
        return list(tx.conn.exec_driver_sql("SELECT id, kind, status, limits FROM analysis").all())


async def test_a_router_change_slower_than_its_timeout_fails_the_rollout_and_nginx_keeps_its_file(
    db_url: str, start_api: StartApi, nginx: Nginx
) -> None:
    """The router's timeout bounds the whole change (test, reload, settle), not each command:
    the lease that keeps other replicas off the router lasts only that long."""
    slow = ["sh", "-c", 'sleep 0.7 && exec "$0" "$@"']
    environments = _environments(nginx)
    router = environments["production"]["routers"]["web"]
    router["timeout"] = 1.0
    router["nginx"]["test"] = [*slow, *router["nginx"]["test"]]
    router["nginx"]["reload"] = [*slow, *router["nginx"]["reload"]]
    await router_for("web", nginx.router()).apply({"stable": 50, "canary": 50})  # (by hand, fast)
    before = nginx.include.read_text()
    api = await start_api(db_url, {"web": CANARY}, environments=environments)
    run = await api.trigger("web", parameters={"version": "2.0.0"})
    done = await api.wait(run["id"], timeout=30)
    assert done["status"] == "failed"
    assert "did not finish within the router's timeout of 1s" in done["reason"], done["reason"]
    assert nginx.include.read_text() == before  # the change to all-stable was put back
    assert abs(await _share(nginx) - 50) <= 3


def _shop_canary(weights_file: Path) -> tuple[str, dict[str, Any]]:
    """A pipeline that builds ``shop@<version>`` and rolls it out to production through a
    command router that writes the weights it is given to ``weights_file``."""
    pipeline = built_and_deployed().replace(
        '    jobs: [{name: deploy, run: "true"}]',
        """    strategy:
      canary:
        router: web
        steps:
          - set_weight: 20
          - pause: {approvers: ["role:approver"]}
          - set_weight: 100
        promote: [{name: promote, run: "true"}]
    jobs: [{name: deploy, run: "true"}]""",
    )
    router = {
        "command": ["sh", "-c", f'echo "$SHIPYARD_ROUTER_WEIGHTS" >> {weights_file}'],
        "pools": {"stable": ["a"], "canary": ["b"]},
    }
    return pipeline, {"production": {"routers": {"web": router}}}


async def test_a_rollback_through_a_canary_stage_goes_straight_back_without_pauses_or_people(
    db_url: str, start_api: StartApi, tmp_path: Path
) -> None:
    weights = tmp_path / "weights"
    pipeline, environments = _shop_canary(weights)
    api = await start_api(db_url, {"shop": pipeline}, environments=environments)
    for version in ("1.0.0", "2.0.0"):
        run = await api.trigger("shop", parameters={"version": version})
        await api.wait(run["id"], lambda r: r["status"] == "waiting", timeout=30)
        promoted = await api.post(f"/runs/{run['id']}/rollout/promote", who="approver", json={})
        assert promoted.status == 200, promoted.json
        assert (await api.wait(run["id"], timeout=30))["status"] == "succeeded"
    weights.write_text("")
    rolled = await api.post("/environments/production/rollback", who="deployer", json={})
    assert rolled.status == 202, rolled.json
    done = await api.wait(rolled.json["id"], timeout=30)
    assert done["status"] == "succeeded", done["reason"]  # no pause stopped it, nobody promoted
    assert done["rollout"]["status"] == "promoted"
    assert weights.read_text().split() == ["stable=100,canary=0"]  # the canary never took traffic


CONTROLLED = canary(
    "web",
    [
        "set_weight: 10",
        "pause: {duration: 30s}",
        "set_weight: 50",
        APPROVER_PAUSE,
        "set_weight: 100",
    ],
    promote='"echo promoted=yes >> $SHIPYARD_OUTPUT"',
    abort='"echo removed=yes >> $SHIPYARD_OUTPUT"',
    head=VERSION_PARAMETER,
)


def _command_router(weights_file: Path) -> dict[str, Any]:
    router = {
        "command": ["sh", "-c", f'echo "$SHIPYARD_ROUTER_WEIGHTS" >> {weights_file}'],
        "pools": {"stable": ["a"], "canary": ["b"]},
    }
    return {"production": {"routers": {"web": router}}}


async def test_a_paused_rollout_keeps_its_time_left_and_promote_fully_skips_every_step(
    db_url: str, start_api: StartApi, tmp_path: Path
) -> None:
    api = await start_api(db_url, {"web": CONTROLLED}, environments=_command_router(tmp_path / "w"))
    run = await api.trigger("web", parameters={"version": "2.0.0"})
    paused = await api.wait(run["id"], lambda r: (r["rollout"] or {}).get("step") == 2, timeout=30)
    assert _rollout(paused)["step_until"] is not None
    assert (await api.post(f"/runs/{run['id']}/rollout/pause", who="deployer", json={})).status == 200
    held = await api.run(run["id"])
    assert held["status"] == "paused" and _rollout(held)["step_until"] is None  # the clock stopped
    assert (await api.post(f"/runs/{run['id']}/rollout/resume", who="deployer", json={})).status == 200
    resumed = await api.run(run["id"])
    assert resumed["status"] == "running" and _rollout(resumed)["step_until"] is not None
    full = await api.post(f"/runs/{run['id']}/rollout/promote-full", who="approver", json={"comment": "fine"})
    assert full.status == 200, full.json
    done = await api.wait(run["id"], timeout=30)
    assert done["status"] == "succeeded" and _rollout(done)["status"] == "promoted"
    # (10 %, then promoted fully: no 50 %, no 100 % on the canary; all back to stable)
    assert (tmp_path / "w").read_text().split() == ["stable=90,canary=10", "stable=100,canary=0"]


async def test_canceling_a_run_with_canary_traffic_aborts_its_rollout_first(
    db_url: str, start_api: StartApi, tmp_path: Path
) -> None:
    api = await start_api(db_url, {"web": CONTROLLED}, environments=_command_router(tmp_path / "w"))
    run = await api.trigger("web", parameters={"version": "2.0.0"})
    await api.wait(run["id"], lambda r: (r["rollout"] or {}).get("step") == 2, timeout=30)
    canceled = await api.post(f"/runs/{run['id']}/cancel", who="deployer", json={"reason": "wrong build"})
    assert canceled.status == 200, canceled.json
    done = await api.wait(run["id"], timeout=30)
    assert done["status"] == "canceled" and done["reason"] == "canceled by deployer: wrong build"
    assert _rollout(done)["status"] == "aborted" and _rollout(done)["applied"] == {"stable": 100, "canary": 0}
    jobs = {j["name"]: j for j in done["stages"][0]["jobs"]}
    assert jobs["remove-canary"]["outputs"] == {"removed": "yes"}  # the abort jobs ran first
    early = await api.post(f"/runs/{run['id']}/rollout/promote", who="approver", json={})
    assert_problem(early, 409, "no rollout under way")


#: an open-ended pause, then an analysis: the step a second Promote press would skip
PAUSE_THEN_ANALYSIS = canary(
    "web",
    ["set_weight: 10", APPROVER_PAUSE, "analysis: {checks: [smoke], duration: 10m}", "set_weight: 100"],
    head=VERSION_PARAMETER,
)


async def test_a_promote_names_the_step_it_saw_so_a_second_press_does_not_skip_the_analysis(
    db_url: str, start_api: StartApi, tmp_path: Path
) -> None:
    environments = _command_router(tmp_path / "w")
    environments["production"]["checks"] = {"smoke": {"command": ["true"], "interval": "1s"}}
    api = await start_api(db_url, {"web": PAUSE_THEN_ANALYSIS}, environments=environments)
    run = await api.trigger("web", parameters={"version": "2.0.0"})
    waiting = await api.wait(run["id"], lambda r: r["status"] == "waiting", timeout=30)
    seen = _rollout(waiting)["step"]
    assert seen == 2
    page = f"/ui/runs/web/{run['number']}"
    browser = Browser(api)  # the web view's Promote names the step it showed too
    await browser.sign_in_with(api, "approver")
    _, html, _ = await browser.get(page)
    assert '<input type="hidden" name="step" value="2">' in html

    # two people (or a double click) promote the pause they both saw: the first starts the
    # analysis, the second is refused instead of promoting past the analysis unseen
    promote = f"/runs/{run['id']}/rollout/promote"
    first = await api.post(promote, who="approver", json={"step": seen})
    assert first.status == 200, first.json
    # (2.0 is the integer 2 to JSON Schema, as to the API)
    second = await api.post(promote, who="approver", json={"step": float(seen), "comment": "ok"})
    assert_problem(second, 409, "moved on to step 3 of 4 (analysis of smoke for 10m)", "since step 2")
    try:
        form = {"csrf": await browser.csrf(page), "step": "2"}
        status, html, _ = await browser.post(page + "/promote-canary", form)
    finally:
        await browser.session.close()
    assert status == 409 and "moved on to step 3 of 4" in html, html
    measuring = _rollout(await api.run(run["id"]))
    assert (measuring["status"], measuring["step"]) == ("progressing", 3)
    assert measuring["analysis"] is not None
    refused = (await api.get("/audit?limit=50&actor=approver", "admin")).json["items"]
    entry = next(e for e in refused if e["action"] == "promote_rollout" and e["outcome"] == "rejected")
    assert "moved on to step 3 of 4" in entry["reason"] and entry["detail"]["step"] == 2, entry

    # steps count from 1, as the run shows them; a promote without one (older clients) goes
    # past whatever step the rollout is in
    assert_problem(await api.post(promote, who="approver", json={"step": 0}), 422, "step")
    assert (await api.post(promote, who="approver", json={})).status == 200
    done = await api.wait(run["id"], timeout=30)
    assert done["status"] == "succeeded" and _rollout(done)["status"] == "promoted"


#: a short analysis between two weights, its check's exit status read from a file
MEASURED = canary(
    "web",
    ["set_weight: 10", "analysis: {checks: [smoke], duration: 3s}", "set_weight: 50"],
    head=VERSION_PARAMETER,
)


async def _paused_while_measuring(
    db_url: str, start_api: StartApi, tmp_path: Path, exit_status: int
) -> tuple[Api, str, Path]:
    """A run of ``MEASURED`` paused while its analysis measures a check exiting ``exit_status``;
    the run's id and the file its router writes each change to."""
    (tmp_path / "smoke").write_text(str(exit_status))
    smoke = {"command": ["sh", "-c", f"exit $(cat {tmp_path / 'smoke'})"], "interval": "1s", "timeout": "1s"}
    environments = _command_router(tmp_path / "w")
    environments["production"]["checks"] = {"smoke": smoke}
    api = await start_api(db_url, {"web": MEASURED}, environments=environments)
    run = await api.trigger("web", parameters={"version": "2.0.0"})
    await api.wait(run["id"], lambda r: (r["rollout"] or {}).get("analysis") is not None, timeout=30)
    assert (await api.post(f"/runs/{run['id']}/rollout/pause", who="deployer", json={})).status == 200
    return api, run["id"], tmp_path / "w"


async def _analysis_ended(api: Api, run_id: str) -> str:
    """The status the run's analysis ended with (waiting for it to end)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        items = (await api.get(f"/runs/{run_id}/verification")).json["items"]
        if items and items[0]["status"] != "running":
            return str(items[0]["status"])
        await asyncio.sleep(0.2)
    raise AssertionError(f"the analysis of {run_id} never ended")


async def test_an_analysis_that_passes_while_the_run_is_paused_moves_no_traffic_until_it_resumes(
    db_url: str, start_api: StartApi, tmp_path: Path
) -> None:
    api, run_id, weights = await _paused_while_measuring(db_url, start_api, tmp_path, 0)
    assert await _analysis_ended(api, run_id) == "passed"  # kept, not canceled
    await asyncio.sleep(0.6)  # (the router driver's rounds: nothing to set)
    held = await api.run(run_id)
    assert held["status"] == "paused" and weights.read_text().split() == ["stable=90,canary=10"]
    rollout = _rollout(held)
    assert (rollout["status"], rollout["step"], rollout["analysis"]) == ("progressing", 2, None), rollout
    assert rollout["reason"] == (
        "analysis at step 2 (canary at 10%) passed while the run was paused: "
        "the rollout goes on when it resumes"
    )

    assert (await api.post(f"/runs/{run_id}/rollout/resume", who="deployer", json={})).status == 200
    done = await api.wait(run_id, timeout=30)
    assert done["status"] == "succeeded" and _rollout(done)["status"] == "promoted"
    assert weights.read_text().split() == [
        "stable=90,canary=10",
        "stable=50,canary=50",
        "stable=100,canary=0",
    ]


async def test_an_analysis_that_fails_while_the_run_is_paused_still_puts_traffic_back_on_stable(
    db_url: str, start_api: StartApi, tmp_path: Path
) -> None:
    api, run_id, weights = await _paused_while_measuring(db_url, start_api, tmp_path, 1)
    done = await api.wait(run_id, timeout=30)
    assert done["status"] == "failed", done
    assert done["reason"].startswith("analysis at step 2 (canary at 10%) failed: "), done["reason"]
    assert _rollout(done)["status"] == "aborted"
    assert weights.read_text().split() == ["stable=90,canary=10", "stable=100,canary=0"]


async def test_pausing_the_rollout_of_a_run_without_one_is_refused_and_the_run_goes_on(
    db_url: str, start_api: StartApi, tmp_path: Path
) -> None:
    """``rollout/pause`` is the rollout's control: on a run with no rollout it is a 409 saying
    so, not a pause of the run (that is ``/runs/{run}/pause``)."""
    gate = tmp_path / "go"
    api = await start_api(db_url, {"plain": one_job("plain", f'"while [ ! -f {gate} ]; do sleep 0.1; done"')})
    run = await api.trigger("plain")
    await api.wait(run["id"], lambda r: r["status"] == "running", timeout=30)
    for verb in ("pause", "resume"):
        refused = await api.post(f"/runs/{run['id']}/rollout/{verb}", who="deployer", json={})
        assert_problem(refused, 409, f"{run['ref']} has no rollout", "none of its stages")
    assert (await api.run(run["id"]))["status"] == "running"  # not paused
    gate.touch()
    assert (await api.wait(run["id"], timeout=30))["status"] == "succeeded"


async def test_a_reload_that_took_but_overran_the_timeout_in_its_settle_is_confirmed(
    db_url: str, start_api: StartApi, nginx: Nginx
) -> None:
    """nginx tested and reloaded the new weights; only its settle ran past the router's timeout.
    Read back after the settle, the weights are what the rollout wanted: confirmed, not failed."""
    environments = _environments(nginx)
    router = environments["production"]["routers"]["web"]
    router["timeout"] = 1.0
    router["nginx"]["settle"] = 2.0  # (nginx -t and the reload take far less than the 1s)
    pipeline = canary("web", ["set_weight: 30", APPROVER_PAUSE], head=VERSION_PARAMETER)
    api = await start_api(db_url, {"web": pipeline}, environments=environments)
    run = await api.trigger("web", parameters={"version": "2.0.0"})
    waiting = await api.wait(run["id"], lambda r: r["status"] != "running", timeout=30)
    assert waiting["status"] == "waiting", waiting["reason"]
    assert _rollout(waiting)["applied"] == {"stable": 70, "canary": 30}
    assert abs(await _share(nginx) - 30) <= 3

    # the change did overrun the timeout: confirmed over a second after it was asked for
    events = await api.db(lambda: api.store.events_after(0, limit=5000, run_id=run["id"]))
    asked = next(e for e in events if e.name == "rollout.step")
    applied = next(e for e in events if e.name == "rollout.weights_applied")
    assert (applied.at - asked.at).total_seconds() > 1.0, (asked.at, applied.at)


async def test_a_run_paused_while_its_router_is_set_takes_no_further_step_until_it_resumes(
    db_url: str, start_api: StartApi, tmp_path: Path
) -> None:
    """The router is being set to 10 % when the run is paused: the change finishes (it is
    confirmed), but the rollout takes no next step, so no traffic moves, until the run resumes."""
    weights, gate = tmp_path / "w", tmp_path / "go"
    slow = {  # (each change waits for ``go`` to exist, so the test pauses the run mid-change)
        "command": [
            "sh",
            "-c",
            f'while [ ! -f {gate} ]; do sleep 0.05; done; echo "$SHIPYARD_ROUTER_WEIGHTS" >> {weights}',
        ],
        "pools": {"stable": ["a"], "canary": ["b"]},
    }
    pipeline = canary("web", ["set_weight: 10", "set_weight: 50"], head=VERSION_PARAMETER)
    api = await start_api(db_url, {"web": pipeline}, environments={"production": {"routers": {"web": slow}}})
    run = await api.trigger("web", parameters={"version": "2.0.0"})
    await api.wait(
        run["id"], lambda r: (r["rollout"] or {}).get("desired", {}).get("canary") == 10, timeout=30
    )
    assert (await api.post(f"/runs/{run['id']}/pause", who="deployer", json={})).status == 200
    gate.touch()

    held = await api.wait(run["id"], lambda r: _rollout(r)["applied"] is not None, timeout=30)
    assert held["status"] == "paused" and _rollout(held)["applied"] == {"stable": 90, "canary": 10}
    await asyncio.sleep(1.5)  # (time for a next change, had one been asked for)
    still = await api.run(run["id"])
    assert _rollout(still)["desired"] == {"stable": 90, "canary": 10}, _rollout(still)
    assert weights.read_text().split() == ["stable=90,canary=10"]  # no traffic moved while paused

    assert (await api.post(f"/runs/{run['id']}/resume", who="deployer", json={})).status == 200
    done = await api.wait(run["id"], timeout=30)
    assert done["status"] == "succeeded", done["reason"]
    assert weights.read_text().split() == [
        "stable=90,canary=10",
        "stable=50,canary=50",
        "stable=100,canary=0",
    ]


async def test_a_router_that_applies_other_weights_fails_the_rollout_saying_what_it_applies(
    db_url: str, start_api: StartApi, tmp_path: Path
) -> None:
    """The router takes 10 %, then, asked for 50 %, reads back 30 % (it rounds, or someone else
    set it): the rollout fails, and what it says about traffic is what the router read back,
    not the 10 % confirmed before."""
    script = tmp_path / "router.sh"
    script.write_text(
        '#!/bin/sh\nif [ "$SHIPYARD_ROUTER_WEIGHTS" = "stable=50,canary=50" ]; '
        'then echo stable=70,canary=30; else echo "$SHIPYARD_ROUTER_WEIGHTS"; fi\n'
    )
    script.chmod(0o755)
    router = {"command": [str(script)], "pools": {"stable": ["a"], "canary": ["b"]}}
    pipeline = canary("web", ["set_weight: 10", "set_weight: 50"], head=VERSION_PARAMETER, abort=None)
    api = await start_api(
        db_url, {"web": pipeline}, environments={"production": {"routers": {"web": router}}}
    )
    run = await api.trigger("web", parameters={"version": "2.0.0"})
    done = await api.wait(run["id"], timeout=30)
    assert done["status"] == "failed"
    assert done["reason"] == (
        "router web failed: it applies stable 70 / canary 30 instead of stable 50 / canary 50; "
        "traffic is at stable 70 / canary 30 (read back from the router)"
    ), done["reason"]
    assert _rollout(done)["applied"] == {"stable": 70, "canary": 30}


async def test_an_abort_whose_router_refuses_for_a_moment_is_retried_until_traffic_is_back(
    db_url: str, start_api: StartApi, tmp_path: Path
) -> None:
    """The router refuses the abort's change for a moment (a load balancer's API blips): the
    abort is tried again, saying what it waits for, instead of failing with traffic left on the
    canary; once the router takes it, traffic is back on stable and the run ends canceled."""
    weights, down = tmp_path / "w", tmp_path / "down"
    script = tmp_path / "router.sh"
    script.write_text(
        f"#!/bin/sh\nif [ -e {down} ]; then echo 'lb-api: 503' >&2; exit 1; fi\n"
        f'echo "$SHIPYARD_ROUTER_WEIGHTS" >> {weights}\n'
    )
    script.chmod(0o755)
    router = {"command": [str(script)], "pools": {"stable": ["a"], "canary": ["b"]}, "resume_wait": "1m"}
    api = await start_api(
        db_url, {"web": CONTROLLED}, environments={"production": {"routers": {"web": router}}}
    )
    run = await api.trigger("web", parameters={"version": "2.0.0"})
    await api.wait(run["id"], lambda r: (r["rollout"] or {}).get("step") == 2, timeout=30)
    down.touch()
    aborted = await api.post(f"/runs/{run['id']}/rollout/abort", who="deployer", json={"reason": "bad"})
    assert aborted.status == 200, aborted.json

    waiting = await api.wait(run["id"], lambda r: _rollout(r)["router_wait"] != "", timeout=30)
    assert waiting["status"] == "running" and _rollout(waiting)["status"] == "aborting", waiting["reason"]
    said = _rollout(waiting)["router_wait"]
    assert "the abort puts all traffic back on stable" in said and "lb-api: 503" in said, said
    await asyncio.sleep(1.5)  # (tried again meanwhile, and still not given up)
    assert (await api.run(run["id"]))["status"] == "running"
    down.unlink()

    done = await api.wait(run["id"], timeout=30)
    assert done["status"] == "canceled", done["reason"]
    assert _rollout(done)["applied"] == {"stable": 100, "canary": 0} and _rollout(done)["router_wait"] == ""
    assert weights.read_text().split() == ["stable=90,canary=10", "stable=100,canary=0"]
