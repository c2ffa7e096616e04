"""Server-Sent Events: a client follows a run without polling; the stream ends when the run
has finished and resumes after ``Last-Event-ID`` without repeating anything."""

from __future__ import annotations

import asyncio

from tests.api.conftest import Api, parse_sse


async def test_a_client_follows_a_run_until_it_finishes(api: Api) -> None:
    run = await api.trigger("gated")
    following = asyncio.create_task(api.stream(f"/runs/{run['id']}/events"))
    await api.wait_status(run["id"], "waiting")
    await asyncio.sleep(0.2)  # a few of the stream's wake-ups: it must stay open while the gate waits
    assert not following.done()

    approved = await api.post(f"/runs/{run['id']}/gates/production/approve", "approver")
    assert approved.status == 200, approved.text
    reply = await asyncio.wait_for(following, 15)
    assert reply.status == 200
    assert reply.content_type == "text/event-stream"

    events = parse_sse(reply.text)
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    names = [e["event"] for e in events]
    assert names[0] == "run.created"
    assert names[-1] == "run.succeeded"
    assert all(e["data"]["run_id"] == run["id"] for e in events)
    for name in ("gate.open", "gate.approval_added", "gate.approved", "job.running", "job.succeeded"):
        assert name in names, name
    assert names.index("gate.open") < names.index("gate.approved") < names.index("run.succeeded")
    approved_event = events[names.index("gate.approved")]
    assert approved_event["data"]["from"] == "open" and approved_event["data"]["to"] == "approved"


async def test_resuming_with_last_event_id_sends_only_what_followed(api: Api) -> None:
    run = await api.trigger("web", parameters={"ref": "abc1234"})
    await api.wait(run["id"])
    whole = parse_sse((await api.stream(f"/runs/{run['id']}/events")).text)
    assert len(whole) > 5 and whole[-1]["event"] == "run.succeeded"

    cut = whole[3]["id"]
    resumed = await api.stream(f"/runs/{run['id']}/events", headers={"Last-Event-ID": str(cut)})
    rest = parse_sse(resumed.text)
    assert [e["id"] for e in rest] == [e["id"] for e in whole[4:]]
    assert rest == whole[4:]

    done = await api.stream(f"/runs/{run['id']}/events", headers={"Last-Event-ID": str(whole[-1]["id"])})
    assert done.status == 200 and parse_sse(done.text) == []


async def test_the_stream_carries_only_its_own_runs_events(api: Api) -> None:
    mine = await api.trigger("quick")
    other = await api.trigger("quick")
    await api.wait(mine["id"])
    await api.wait(other["id"])
    events = parse_sse((await api.stream("/runs/quick%231/events")).text)
    assert events and {e["data"]["run_id"] for e in events} == {mine["id"]}
