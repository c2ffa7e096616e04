"""Runs: trigger, read (by id and by ``pipeline#number``), ETags, lists with filters and cursors,
job logs."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa

from storage.store import LOG_PAGE
from storage.tables import T
from tests.api.conftest import Api, assert_problem

REF = "abc1234"


async def test_trigger_answers_202_with_location_and_the_run_then_succeeds(api: Api) -> None:
    reply = await api.post(
        "/pipelines/web/runs", "deployer", json={"parameters": {"ref": REF}, "revision": "deadbeef"}
    )
    assert reply.status == 202, reply.text
    run = reply.json
    assert reply.headers["Location"] == f"/api/v1/runs/{run['id']}"
    assert run["ref"] == "web#1" and run["number"] == 1 and run["pipeline"] == "web"
    assert run["status"] in ("pending", "running")
    assert run["parameters"] == {"ref": REF, "dry_run": "false"}
    assert run["revision"] == "deadbeef"
    assert run["pipeline_version"] == 1
    assert run["triggered_by"] == {"principal": "deployer", "channel": "rest"}
    assert [s["name"] for s in run["stages"]] == ["build", "staging"]

    done = await api.wait(run["id"])
    assert done["status"] == "succeeded", done
    assert done["started_at"] and done["finished_at"] and done["created_at"]
    assert [s["status"] for s in done["stages"]] == ["succeeded", "succeeded"]
    job = done["stages"][0]["jobs"][0]
    assert job["name"] == "compile" and job["status"] == "succeeded" and job["exit_code"] == 0


async def test_a_run_is_found_by_id_and_by_its_pipeline_number(api: Api) -> None:
    run = await api.trigger("web", parameters={"ref": REF})
    by_id = await api.get(f"/runs/{run['id']}")
    by_ref = await api.get("/runs/web%231")
    assert by_id.status == by_ref.status == 200
    assert by_id.json["id"] == by_ref.json["id"] == run["id"]
    assert_problem(await api.get("/runs/web%232"), 404, "web#2")
    assert_problem(await api.get("/runs/0123456789abcdef0123456789abcdef"), 404)


async def test_a_pinned_pipeline_version_is_used_and_an_unknown_one_is_404(api: Api) -> None:
    run = await api.trigger("quick", pipeline_version=1)
    assert run["pipeline_version"] == 1
    assert_problem(
        await api.post("/pipelines/quick/runs", "deployer", json={"pipeline_version": 7}), 404, "version 7"
    )


async def test_etag_and_if_none_match_make_polling_cheap(api: Api) -> None:
    run = await api.trigger("slow")
    for _ in range(200):  # let the runner claim the job first: a claim changes the run (and its ETag)
        current = await api.run(run["id"])
        if current["stages"][0]["jobs"][0]["status"] == "running":
            break
        await asyncio.sleep(0.02)
    first = await api.get(f"/runs/{run['id']}")
    etag = first.headers["ETag"]
    assert etag
    unchanged = await api.get(f"/runs/{run['id']}", headers={"If-None-Match": etag})
    assert unchanged.status == 304 and unchanged.text == ""
    assert unchanged.headers["ETag"] == etag
    weak = await api.get(f"/runs/{run['id']}", headers={"If-None-Match": f'"other", W/{etag}'})
    assert weak.status == 304

    assert (await api.post(f"/runs/{run['id']}/cancel", "deployer")).status == 200
    changed = await api.get(f"/runs/{run['id']}", headers={"If-None-Match": etag})
    assert changed.status == 200
    assert changed.json["status"] == "canceled"
    assert changed.headers["ETag"] != etag


async def test_runs_are_listed_newest_first_in_pages_that_do_not_overlap(api: Api) -> None:
    ids = [(await api.trigger("quick"))["id"] for _ in range(5)]
    for run_id in ids:
        await api.wait(run_id)
    seen: list[dict[str, object]] = []
    cursor = None
    pages = 0
    while True:
        query = "/runs?limit=2" + (f"&cursor={cursor}" if cursor else "")
        reply = await api.get(query)
        assert reply.status == 200, reply.text
        page = reply.json
        assert len(page["items"]) <= 2
        seen += page["items"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert [r["id"] for r in seen] == list(reversed(ids))
    assert [r["number"] for r in seen] == [5, 4, 3, 2, 1]
    assert "stages" not in seen[0]  # a summary: the run itself has the detail


async def test_runs_are_filtered_by_pipeline_status_environment_and_who_triggered(api: Api) -> None:
    web = await api.trigger("web", parameters={"ref": REF})
    quick = await api.trigger("quick", who="deployer2")
    broken = await api.trigger("broken")
    for run in (web, quick, broken):
        await api.wait(run["id"])

    async def ids(query: str) -> set[str]:
        reply = await api.get("/runs?" + query)
        assert reply.status == 200, reply.text
        return {r["id"] for r in reply.json["items"]}

    assert await ids("pipeline=web") == {web["id"]}
    assert await ids("status=failed") == {broken["id"]}
    assert await ids("status=succeeded") == {web["id"], quick["id"]}
    assert await ids("environment=staging") == {web["id"]}
    assert await ids("triggered_by=deployer2") == {quick["id"]}
    assert await ids("pipeline=quick&status=failed") == set()
    assert await ids("pipeline=nothing-here") == set()


async def test_a_job_log_is_served_whole_or_its_last_lines(api: Api) -> None:
    run = await api.trigger("web", parameters={"ref": REF})
    done = await api.wait(run["id"])
    job_id = done["stages"][0]["jobs"][0]["id"]

    whole = await api.get(f"/runs/{run['id']}/jobs/build%2Fcompile/log")
    assert whole.status == 200 and whole.content_type == "text/plain"
    assert whole.text == "".join(f"line{i}\n" for i in range(1, 6))
    by_id = await api.get(f"/runs/web%231/jobs/{job_id}/log")
    assert by_id.text == whole.text
    tail = await api.get(f"/runs/{run['id']}/jobs/build%2Fcompile/log?tail=2")
    assert tail.status == 200 and tail.text == "line4\nline5\n"
    assert_problem(await api.get(f"/runs/{run['id']}/jobs/build%2Fnope/log"), 404, "build/compile")
    assert_problem(await api.get(f"/runs/{run['id']}/jobs/build%2Fcompile/log?tail=0"), 400, "tail")


async def test_a_log_of_many_chunks_is_streamed_whole_and_in_order(api: Api) -> None:
    """Read a few chunks at a time (never the whole log in memory), it still arrives whole."""
    run = await api.trigger("web", parameters={"ref": REF})
    done = await api.wait(run["id"])
    job = done["stages"][0]["jobs"][0]
    more = [f"more {i} " + "x" * 1000 + "\n" for i in range(LOG_PAGE * 3 + 5)]

    def append() -> None:
        rows = [{"job_id": job["id"], "attempt": job["attempt"], "stream": "stdout", "text": t} for t in more]
        with api.shipyard.store.engine.begin() as conn:
            conn.execute(sa.insert(T["log_chunk"]), rows)

    await api.db(append)
    whole = await api.get(f"/runs/{run['id']}/jobs/build%2Fcompile/log")
    assert whole.status == 200
    assert whole.text == "".join(f"line{i}\n" for i in range(1, 6)) + "".join(more)


async def test_the_log_of_an_earlier_attempt_is_served_too(api: Api) -> None:
    run = await api.trigger("flaky")
    done = await api.wait(run["id"])
    assert done["status"] == "succeeded" and done["stages"][0]["jobs"][0]["attempt"] == 2
    path = f"/runs/{run['id']}/jobs/s%2Fj/log"
    assert (await api.get(path)).text == "second\nagain\n"
    assert (await api.get(path + "?attempt=1")).text == "first\none\n"
    assert (await api.get(path + "?attempt=2&tail=1")).text == "again\n"


async def test_the_tail_of_an_earlier_attempt(api: Api) -> None:
    run = await api.trigger("flaky")
    await api.wait(run["id"])
    assert (await api.get(f"/runs/{run['id']}/jobs/s%2Fj/log?attempt=1&tail=1")).text == "one\n"


async def test_runs_triggered_at_once_are_paged_without_overlap_or_gaps(api: Api) -> None:
    runs = await asyncio.gather(*(api.trigger("quick") for _ in range(12)))
    seen: list[str] = []
    cursor = None
    while True:
        page = (await api.get("/runs?limit=5" + (f"&cursor={cursor}" if cursor else ""))).json
        seen += [r["id"] for r in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 12
    assert set(seen) == {r["id"] for r in runs}


async def test_runs_triggered_at_once_are_listed_newest_first(api: Api) -> None:
    await asyncio.gather(*(api.trigger("quick") for _ in range(20)))
    numbers = [r["number"] for r in (await api.get("/runs?limit=50")).json["items"]]
    assert numbers == sorted(numbers, reverse=True)
