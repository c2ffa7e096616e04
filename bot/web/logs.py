"""A job's log in the web view: followed live as Server-Sent Events from its last MiB on, and
downloaded whole as a file (both streamed a page of chunks at a time)."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from bot.web.pages import find, may_read
from bot.web.render import Answer, message
from bot.web.signin import WEB, required
from core.ports import LogChunk
from core.states import RUN_TERMINAL

#: chunks of log read at a time for a page following a job
LOG_CHUNKS = 64
#: a message to that page holds about this much output (browsers parse big ones slowly)
MESSAGE_CHARS = 64 << 10
#: a page shows the last this many characters of a log (the whole of it is a download away)
SHOWN_CHARS = 1 << 20
#: how often a followed log is read again while its run goes on (the runner sends output every
#: half second: a new line reaches the page within about a second)
FOLLOW_S = 0.25


async def job_log(request: web.Request) -> web.StreamResponse:
    """The whole log of a job's latest attempt, as a file (streamed a page at a time)."""
    who = await required(request)
    may_read(who)
    state = await find(request, who)
    name = f"{request.match_info['stage']}/{request.match_info['job']}"
    job = state.find_job(name)
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
    may_read(who)
    state = await find(request, who)
    job = state.find_job(f"{request.match_info['stage']}/{request.match_info['job']}")
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
