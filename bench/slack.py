"""Slack benchmark: how fast a real ``shipyard serve`` acknowledges ``/deploy`` and edits run messages.

A fake Slack Web API (``tests/slack/fake_slack.py``) runs in this process, on its own thread and
event loop, on a free loopback port. ``shipyard serve`` is started as a subprocess (as in
``bench.api``: a SQLite file in a temporary directory, an admin token, a pipelines directory holding
one pipeline ``bench`` whose one job runs ``true``) with ``SLACK_API_URL`` pointing at the fake,
``SLACK_BOT_TOKEN=xoxb-bench`` and a signing secret, so its Bolt app answers HTTP slash commands at
``/slack/events`` and its notifier posts and edits run messages in the fake. The bench users are
granted ``deployer`` in the database before the server starts.

After one warm-up command (``run bench``, waited for to the end) and ``--single`` commands sent one
at a time (their ack latency is the floor under the burst figures), ``--rounds`` rounds each fire
``--concurrency`` signed ``/deploy`` commands at once (signed exactly as Slack signs them, by
``tests/slack/signing.py``), ``--interval`` seconds apart. A ``--run-share`` of them are
``run bench``; the rest cycle through ``help``, ``runs``, ``status bench#<n>``, ``list``,
``whoami`` and ``runs bench``. Measured:

  ack      time from sending a command to its HTTP 200 (what Slack's 3-second rule is about)
  reply    time from sending a command to its reply arriving at its response_url (informative:
           the work done after the ack)
  edit     for every run the rounds started: from the run's ``succeeded`` event (its ``at`` in the
           database's event log; the same instant as ``run.finished_at``) to the arrival at the fake
           of the first ``chat.update`` of the run's message (its ts from the ``slack_message`` table,
           checked against the first ``chat.postMessage``) whose text says ``succeeded``
  posted   informative: from the run's creation (``run.created_at``) to its message being posted

All times of day come from this one machine's clock; ack and reply latencies from a monotonic one.
Also reported: runs that never got a message or a final edit, messages posted more than once, the
edits per run and the shortest gap between two edits of one message (the notifier coalesces edits
to about one a second; the final state is shown at once, so one shorter gap per run is expected).

    python -m bench.slack                   # 10 rounds of 50 concurrent commands
    python -m bench.slack --quick           # 3 rounds (< 30 s)
    python -m bench.slack --concurrency 100 --rounds 5 --run-share 0.5 --keep

Targets (SQLite): ack p99 <= 100 ms at 50 concurrent commands; state change to message edit
<= 1.5 s p99.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import platform
import shlex
import sqlite3
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.api import PIPELINE_NAME, Server, cpu_model, machine_cpu, nproc, own_cpu, percentile
from tests.slack.fake_slack import Call, FakeSlack
from tests.slack.signing import slash_command

SECRET = "bench-signing-secret-0123456789abcdef"
BOT_TOKEN = "xoxb-bench"
CHANNEL = "C0BENCH"
USERS = ("U0BENCH1", "U0BENCH2", "U0BENCH3", "U0BENCH4")
CHEAP = ("help", "runs", "status", "list", "whoami", "runs " + PIPELINE_NAME)

ACK_P99_MS = 100.0
EDIT_P99_S = 1.5
ACK_AT = 50  # the concurrency the ack target is stated for

# -- the fake Slack, on its own thread ---------------------------------------------------------------


@dataclass(frozen=True)
class Arrival:
    at: float  # time.time() when the fake had read the call
    method: str
    channel: str
    ts: str  # the message's ts (chat.update: the one edited; chat.postMessage: the one created)
    thread_ts: str | None
    text: str
    ok: bool


class RecordingSlack(FakeSlack):
    """The fake Slack, also noting when each ``chat.postMessage``/``chat.update`` and each post to
    a response_url arrived. Runs on its own thread so that the bench's clients cannot delay it."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[Arrival] = []
        self.replied: dict[str, float] = {}  # response_url token -> first post's arrival
        for method, handler in (
            ("chat.postMessage", self._chat_post_message),
            ("chat.update", self._chat_update),
        ):
            self.set_handler(method, self._timed(method, handler))

    def _timed(self, method: str, handler: Any) -> Any:
        def timed(call: Call) -> dict[str, Any]:
            at = time.time()
            answer: dict[str, Any] = {}
            try:
                answer = handler(call)
                return answer
            finally:
                args = call.args
                ts = str(answer.get("ts") or args.get("ts") or "")
                self.arrivals.append(
                    Arrival(
                        at,
                        method,
                        str(args.get("channel", "")),
                        ts,
                        args.get("thread_ts"),
                        str(args.get("text", "")),
                        bool(answer.get("ok")),
                    )
                )

        return timed

    async def _response(self, request: web.Request) -> web.Response:
        self.replied.setdefault(request.match_info["token"], time.time())
        return await super()._response(request)


class SlackThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fake-slack", daemon=True)
        self.fake: RecordingSlack | None = None

    def start(self) -> RecordingSlack:
        self.thread.start()

        async def make() -> RecordingSlack:
            fake = RecordingSlack()
            await fake.start()
            return fake

        self.fake = asyncio.run_coroutine_threadsafe(make(), self.loop).result(10)
        return self.fake

    def stop(self) -> None:
        if self.fake is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self.fake.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


# -- the server's database (read only) ---------------------------------------------------------------


def wall(value: str | None) -> float | None:
    """A naive-UTC timestamp as the database stores it, as seconds since the epoch."""
    if not value:
        return None
    return datetime.fromisoformat(value).replace(tzinfo=UTC).timestamp()


@dataclass
class RunRecord:
    id: str
    number: int
    status: str
    created: float | None
    finished: float | None
    succeeded_event: float | None
    channel: str | None
    ts: str | None


def read_runs(db: Path) -> list[RunRecord]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute(
            """
            SELECT r.id, r.number, r.status, r.created_at, r.finished_at, m.channel, m.ts,
                   (SELECT min(e.at) FROM event e
                     WHERE e.run_id = r.id AND e.subject = 'run' AND e.to_status = 'succeeded')
              FROM run r LEFT JOIN slack_message m ON m.run_id = r.id
             WHERE r.pipeline = ? ORDER BY r.number
            """,
            (PIPELINE_NAME,),
        ).fetchall()
    finally:
        conn.close()
    return [
        RunRecord(
            id=r[0],
            number=int(r[1]),
            status=r[2],
            created=wall(r[3]),
            finished=wall(r[4]),
            channel=r[5],
            ts=r[6],
            succeeded_event=wall(r[7]),
        )
        for r in rows
    ]


TERMINAL = {"succeeded", "failed", "partial", "canceled", "timed_out", "lost"}


# -- commands ------------------------------------------------------------------------------------------


@dataclass
class Sent:
    text: str
    token: str
    sent_at: float  # time.time()
    ack_s: float = float("nan")
    status: int = 0
    error: str = ""


@dataclass
class Results:
    sent: list[Sent] = field(default_factory=list)
    rounds: list[tuple[float, float, float]] = field(default_factory=list)  # (seconds, server, machine %)
    warmup_run: int | None = None
    alone: list[float] = field(default_factory=list)  # acks of commands sent one at a time


def command_texts(round_no: int, n: int, run_share: float, started: int) -> list[str]:
    runs = round(n * run_share)
    cheap = itertools.cycle(CHEAP[round_no % len(CHEAP) :] + CHEAP[: round_no % len(CHEAP)])
    texts = []
    for i in range(n):
        if i * runs // n != (i + 1) * runs // n:  # spread the run commands through the batch
            texts.append(f"run {PIPELINE_NAME}")
            continue
        verb = next(cheap)
        if verb == "status":
            verb = f"status {PIPELINE_NAME}#{1 + (round_no * 7 + i) % max(1, started)}"
        texts.append(verb)
    return texts


async def send_one(session: aiohttp.ClientSession, url: str, fake: RecordingSlack, text: str, n: int) -> Sent:
    token = f"b{n:06d}"
    user = USERS[n % len(USERS)]
    body, headers = slash_command(
        SECRET, text, user_id=user, channel_id=CHANNEL, response_url=fake.response_url(token)
    )
    sent = Sent(text, token, time.time())
    t0 = time.perf_counter()
    try:
        async with session.post(url, data=body, headers=headers) as response:
            await response.read()
            sent.status = response.status
    except (TimeoutError, aiohttp.ClientError) as exc:
        sent.error = f"{type(exc).__name__}: {exc}"
    sent.ack_s = time.perf_counter() - t0
    if not sent.error and sent.status != 200:
        sent.error = f"HTTP {sent.status}"
    return sent


async def wait_until(check: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(interval)
    return bool(check())


def final_edit(fake: RecordingSlack, run: RunRecord, method: str | None = None) -> Arrival | None:
    """The first call that showed the run's message as succeeded: a chat.update of its ts, or (if
    the message was first posted after the run ended) the chat.postMessage that created it."""
    for a in list(fake.arrivals):
        if not a.ok or a.thread_ts or a.channel != run.channel or a.ts != run.ts:
            continue
        if method is not None and a.method != method:
            continue
        if f"#{run.number} succeeded" in a.text:
            return a
    return None


async def drive(args: argparse.Namespace, server: Server, fake: RecordingSlack, db: Path) -> Results:
    url = server.base + "/slack/events"
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=None)
    results = Results()
    counter = itertools.count(1)  # each command its own response_url (Slack allows 5 posts to one)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        # warm-up: the bot's auth.test, the first post, every code path once; not recorded
        warm = await send_one(session, url, fake, f"run {PIPELINE_NAME}", next(counter))
        if warm.error:
            raise SystemExit(f"the warm-up command failed: {warm.error}\n{server.tail()}")

        def warm_done() -> bool:
            runs = read_runs(db)
            return bool(runs) and runs[0].status in TERMINAL and final_edit(fake, runs[0]) is not None

        if not await wait_until(warm_done, 20):
            raise SystemExit(f"the warm-up run got no final message edit within 20 s\n{server.tail()}")
        results.warmup_run = read_runs(db)[0].number
        await asyncio.gather(
            *(
                send_one(session, url, fake, t, next(counter))
                for t in ("help", "runs", "status bench#1", "list")
            )
        )
        # one command at a time: the floor under the burst figures
        for i in range(args.single):
            alone = await send_one(session, url, fake, CHEAP[i % 2], next(counter))
            if not alone.error:
                results.alone.append(alone.ack_s)
            await asyncio.sleep(0.02)
        results.alone.sort()
        print(f"  ack of one command at a time ({len(results.alone)} help/runs): {spread(results.alone, ms)}")

        started = 1
        for r in range(args.rounds):
            texts = command_texts(r, args.concurrency, args.run_share, started)
            started += sum(t.startswith("run ") for t in texts)
            cpu0, (busy0, total0) = server.cpu(), machine_cpu()
            t0 = time.perf_counter()
            batch = await asyncio.gather(*(send_one(session, url, fake, t, next(counter)) for t in texts))
            took = time.perf_counter() - t0
            busy1, total1 = machine_cpu()
            results.sent.extend(batch)
            results.rounds.append(
                (took, server.cpu() - cpu0, 100 * (busy1 - busy0) / max(total1 - total0, 1))
            )
            acks = sorted(s.ack_s for s in batch if not s.error)
            errors = sum(1 for s in batch if s.error)
            print(
                f"  round {r + 1:>2}: {len(batch)} commands ({texts.count(f'run {PIPELINE_NAME}')} run) "
                f"answered in {took * 1000:6.1f} ms; ack p50 {ms(acks, 50):>9}  max {ms(acks, 100):>9}"
                + (f"; {errors} errors, e.g. {next(s.error for s in batch if s.error)}" if errors else ""),
                flush=True,
            )
            if r + 1 < args.rounds:
                await asyncio.sleep(args.interval)

        # let everything settle: replies, runs, final edits
        def settled() -> bool:
            runs = [x for x in read_runs(db) if x.number != results.warmup_run]
            if any(x.status not in TERMINAL for x in runs):
                return False
            if any(x.ts is None or (x.status == "succeeded" and final_edit(fake, x) is None) for x in runs):
                return False
            return all(s.token in fake.replied for s in results.sent if not s.error)

        t = time.perf_counter()
        if not await wait_until(settled, args.settle, 0.2):
            print(f"  note: not everything settled within {args.settle:.0f} s; what is missing is reported")
        else:
            print(
                f"  settled (all runs finished, all replies and final edits in) after "
                f"{time.perf_counter() - t:.1f} s"
            )
    return results


# -- output ---------------------------------------------------------------------------------------------


def ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1000:.1f} ms" if values else "n/a"


def s_(values: list[float], q: float) -> str:
    return f"{percentile(values, q):.3f} s" if values else "n/a"


def spread(values: list[float], unit: Any) -> str:
    return f"p50 {unit(values, 50):>9}  p99 {unit(values, 99):>9}  max {unit(values, 100):>9}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(args: argparse.Namespace, results: Results, fake: RecordingSlack, db: Path) -> bool:
    sent = results.sent
    acks = sorted(s.ack_s for s in sent if not s.error)
    errors = [s for s in sent if s.error]
    cheap_acks = sorted(s.ack_s for s in sent if not s.error and not s.text.startswith("run "))
    run_acks = sorted(s.ack_s for s in sent if not s.error and s.text.startswith("run "))
    replies = sorted(fake.replied[s.token] - s.sent_at for s in sent if s.token in fake.replied)
    no_reply = sum(1 for s in sent if not s.error and s.token not in fake.replied)

    runs = [r for r in read_runs(db) if r.number != results.warmup_run]
    arrivals = list(fake.arrivals)
    top = [a for a in arrivals if a.method == "chat.postMessage" and a.ok and not a.thread_ts]
    firsts: dict[tuple[str, str], Arrival] = {}
    for a in top:
        firsts.setdefault((a.channel, a.ts), a)
    no_message = [r for r in runs if r.ts is None or (r.channel, r.ts) not in firsts]
    posted = sorted(
        firsts[(r.channel, r.ts)].at - r.created
        for r in runs
        if r.ts is not None and (r.channel, r.ts) in firsts and r.created is not None
    )
    per_run_posts: dict[str, int] = {}
    for a in top:
        ref = a.text.split(" ")[1] if a.text.count(" ") >= 2 else a.text
        per_run_posts[ref] = per_run_posts.get(ref, 0) + 1
    duplicated = sorted(ref for ref, n in per_run_posts.items() if n > 1)

    succeeded = [r for r in runs if r.status == "succeeded"]
    not_succeeded = [r for r in runs if r.status != "succeeded"]
    delays: list[float] = []
    no_final = []
    by_post = 0
    update_delays: list[float] = []
    for r in succeeded:
        a = final_edit(fake, r)
        when = r.succeeded_event if r.succeeded_event is not None else r.finished
        if a is None or when is None:
            no_final.append(r)
        else:
            delays.append(a.at - when)
            by_post += a.method == "chat.postMessage"
            update = final_edit(fake, r, "chat.update")
            if update is not None:
                update_delays.append(update.at - when)
    update_delays.sort()
    delays.sort()
    skew = [abs(r.succeeded_event - r.finished) for r in succeeded if r.succeeded_event and r.finished]

    mine = {(r.channel, r.ts) for r in runs if r.ts is not None}
    edits: dict[tuple[str, str], list[float]] = {key: [] for key in mine}
    for a in arrivals:
        if a.method == "chat.update" and a.ok and (a.channel, a.ts) in mine:
            edits[(a.channel, a.ts)].append(a.at)
    gaps = sorted(
        later - earlier for times in edits.values() for earlier, later in itertools.pairwise(sorted(times))
    )
    short = sum(1 for g in gaps if g < 0.9)
    edits_per_run = sum(len(v) for v in edits.values()) / max(len(edits), 1)

    ack_ok = bool(acks) and percentile(acks, 99) * 1000 <= ACK_P99_MS and not errors
    edit_ok = bool(delays) and percentile(delays, 99) <= EDIT_P99_S and not no_final and not no_message
    print()
    print("== summary")
    print(
        f"  commands     {len(sent):>5}  ({args.rounds} rounds of {args.concurrency} at once; "
        f"{len(run_acks)} run, {len(cheap_acks)} cheap); errors {len(errors)}"
        + (f", e.g. {errors[0].error}" if errors else "")
    )
    print(f"  ack          {spread(acks, ms)}")
    print(f"    cheap      {spread(cheap_acks, ms)}")
    print(f"    run        {spread(run_acks, ms)}")
    print(f"  reply        {spread(replies, ms)}  (send -> response_url post; {no_reply} missing)")
    print(
        f"  runs         {len(runs)} started by the rounds: {len(succeeded)} succeeded"
        + (
            f", {len(not_succeeded)} not ({', '.join(sorted({r.status for r in not_succeeded}))})"
            if not_succeeded
            else ""
        )
        + f"; {len(no_message)} without a message; messages posted twice: {len(duplicated)}"
    )
    print(f"  posted       {spread(posted, s_)}  (run created -> its message posted)")
    print(
        f"  edit         {spread(delays, s_)}"
        f"  (succeeded event -> the message first showing it; {len(no_final)} never shown"
        + (f"; {by_post} already final when posted" if by_post else "")
        + ")"
    )
    if by_post:
        print(f"    update     {spread(update_delays, s_)}  (the first chat.update saying succeeded)")
    if skew:
        print(f"               (event at vs run.finished_at: at most {max(skew) * 1000:.1f} ms apart)")
    print(
        f"  coalescing   {edits_per_run:.1f} edits per message; shortest gap between two edits "
        f"{ms(gaps, 0)}; {short} gaps under 0.9 s across {len(edits)} messages"
    )
    cpu = [f"{100 * c / t:.0f}%" for t, c, _ in results.rounds if t > 0]
    busy = [f"{m:.0f}%" for _, _, m in results.rounds]
    print(f"  server CPU during the bursts (100% = one core): {' '.join(cpu)}")
    print(f"  machine busy during the bursts ({nproc()} CPUs): {' '.join(busy)}")
    print()
    at = f"at {args.concurrency} concurrent" + (
        "" if args.concurrency >= ACK_AT else f" (target is stated at {ACK_AT})"
    )
    print(f"  target ack p99 <= {ACK_P99_MS:.0f} ms {at}: {ms(acks, 99)}  {verdict(ack_ok)}")
    print(
        f"  target state change -> message edit p99 <= {EDIT_P99_S} s: {s_(delays, 99)}  {verdict(edit_ok)}"
    )
    return ack_ok and edit_ok


# -- main ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.slack", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 rounds (< 30 s)")
    parser.add_argument("--concurrency", type=int, default=50, help="commands fired at once (50)")
    parser.add_argument("--rounds", type=int, help="bursts of commands (default 10; quick 3)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between rounds (1.0)")
    parser.add_argument(
        "--run-share", type=float, default=0.2, help="share of the commands that are `run bench` (0.2)"
    )
    parser.add_argument("--capacity", type=int, default=8, help="jobs the built-in runner runs at once (8)")
    parser.add_argument(
        "--single", type=int, default=20, help="commands sent one at a time before the rounds (20)"
    )
    parser.add_argument("--settle", type=float, default=60.0, help="longest wait for runs and edits (60 s)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (SQLite file, log)")
    args = parser.parse_args(argv)
    args.rounds = args.rounds if args.rounds is not None else (3 if args.quick else 10)
    if args.quick:
        args.settle = min(args.settle, 15.0)
    if args.concurrency < 1 or args.rounds < 1 or not 0 <= args.run_share <= 1:
        parser.error("--concurrency and --rounds must be >= 1, --run-share within 0..1")

    import slack_bolt
    import slack_sdk

    command = "python -m bench.slack" + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")
    print(command)
    print(
        f"{cpu_model()}, nproc {nproc()}, Python {platform.python_version()}, aiohttp {aiohttp.__version__}, "
        f"slack-bolt {slack_bolt.version.__version__}, slack-sdk {slack_sdk.version.__version__}, "
        f"SQLite {sqlite3.sqlite_version}; runner capacity {args.capacity}\n"
    )
    t_all = time.perf_counter()
    own0 = own_cpu()
    tmp = Path(tempfile.mkdtemp(prefix="shipyard-bench-slack-"))
    db = tmp / "s.db"
    url = f"sqlite:///{db}"
    slack = SlackThread()
    server: Server | None = None
    ok = False
    try:
        fake = slack.start()
        grant(url)
        os.environ.update(
            {
                "SLACK_API_URL": fake.base_url,
                "SLACK_BOT_TOKEN": BOT_TOKEN,
                "SLACK_SIGNING_SECRET": SECRET,
                "SHIPYARD_SLACK_CHANNEL": CHANNEL,
            }
        )
        os.environ.pop("SLACK_APP_TOKEN", None)
        server = Server(tmp, url, args.capacity)
        took = server.start()
        print(f"== fake Slack on {fake.url}; server on {server.base} (ready after {took:.1f} s)")
        print(
            f"== {args.rounds} rounds of {args.concurrency} concurrent /deploy commands, "
            f"{args.interval:g} s apart ({args.run_share:.0%} `run {PIPELINE_NAME}`)"
        )
        results = asyncio.run(drive(args, server, fake, db))
        ok = report(args, results, fake, db)
        took = server.stop()
        server = None
        log = (tmp / "server.log").read_text(errors="replace")
        problems = [line for line in log.splitlines() if " ERROR " in line or line.startswith("Traceback")]
        print(
            f"\n(server stopped in {took:.1f} s; {len(problems)} errors in its log"
            + (f", first: {problems[0][:200]}" if problems else "")
            + ")"
        )
    finally:
        if server is not None:
            print(server.tail())
            server.stop()
        slack.stop()
        if args.keep:
            print(f"(kept {tmp})")
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\ntotal {time.perf_counter() - t_all:.1f} s (bench process CPU {own_cpu() - own0:.1f} s)")
    sys.exit(0 if ok else 1)


def grant(url: str) -> None:
    """The schema, and ``deployer`` for the bench's Slack users, before the server starts."""
    from core.access import Role
    from storage.directory import Directory
    from storage.migrate import upgrade
    from storage.store import SqlStore

    upgrade(url)
    store = SqlStore(url, pool_size=1)
    try:
        directory = Directory(store)
        for user in USERS:
            directory.grant(user, "role", str(Role.DEPLOYER), datetime.now(UTC))
    finally:
        store.dispose()


if __name__ == "__main__":
    main()
