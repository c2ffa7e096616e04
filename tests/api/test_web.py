"""The web view (``/ui/``) over real HTTP on loopback, each "browser" an aiohttp session with its
own cookie jar: signing in with a one-time link or an API token, sessions and signing out,
CSRF, the security headers, and actions that go through the engine's own rules and audit."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from yarl import URL

from bot.housekeeping import HOUSEKEEPING
from bot.web.signin import COOKIE, web_sessions
from tests.api.conftest import Api, StartApi
from tests.api.test_deploys import SHOP
from tests.pipelines import gated, one_job

SCRIPT = "<script>alert(1)</script>"
NOISY = one_job(
    "noisy", f"""["sh", "-c", "echo '{SCRIPT}'; echo done"]""", head="parameters:\n  - {name: note}"
)


class Browser:
    """A browser of the web view: its own cookies, no token."""

    def __init__(self, api: Api) -> None:
        self.base = str(api.client.make_url("")).rstrip("/")
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def get(self, path: str, **kw: Any) -> tuple[int, str, aiohttp.ClientResponse]:
        async with self.session.get(self.base + path, allow_redirects=False, **kw) as r:
            return r.status, await r.text(), r

    async def post(
        self, path: str, form: dict[str, str], **kw: Any
    ) -> tuple[int, str, aiohttp.ClientResponse]:
        async with self.session.post(self.base + path, data=form, allow_redirects=False, **kw) as r:
            return r.status, await r.text(), r

    async def csrf(self, path: str) -> str:
        status, html, _ = await self.get(path)
        assert status == 200, html
        found = re.search(r'name="csrf" value="([^"]+)"', html)
        assert found is not None, html
        return found.group(1)

    async def sign_in_with(self, api: Api, who: str) -> None:
        status, _, answer = await self.post("/ui/sign-in", {"token": api.tokens[who], "next": "/ui/runs"})
        assert status == 303 and answer.headers["Location"] == "/ui/runs"


async def web_page(api: Api, path: str, who: str = "viewer") -> str:
    """The web view's page at ``path`` as ``who`` sees it."""
    browser = Browser(api)
    try:
        await browser.sign_in_with(api, who)
        status, html, _ = await browser.get(path)
    finally:
        await browser.session.close()
    assert status == 200, html
    return html


@pytest.fixture
async def browsers(lite: Api) -> AsyncIterator[Callable[[], Browser]]:
    made: list[Browser] = []

    def new() -> Browser:
        made.append(Browser(lite))
        return made[-1]

    yield new
    for b in made:
        await b.session.close()


async def _link(api: Api, who: str, at: datetime | None = None) -> str:
    return str(await api.db(web_sessions(api.shipyard).new_link, who, at or datetime.now(UTC)))


def _events(stream: str) -> list[tuple[str, str, str]]:
    """A followed log's Server-Sent Events: (event, id, data), a ``text`` message's data
    decoded (the output it carries)."""
    found = []
    for block in stream.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            data = fields.get("data", "")
            found.append(
                (
                    fields["event"],
                    fields.get("id", ""),
                    json.loads(data) if fields["event"] == "text" else data,
                )
            )

    return found


def _rows(api: Api) -> tuple[int, int]:
    """Login links and sessions stored."""
    with api.store.engine.connect() as conn:
        links = conn.execute(sa.text("SELECT count(*) FROM web_login")).scalar()
        return int(links or 0), int(conn.execute(sa.text("SELECT count(*) FROM web_session")).scalar() or 0)


def _audit(api: Api, action: str) -> list[dict[str, Any]]:
    with api.store.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM audit WHERE action = :a ORDER BY id"), {"a": action})
        return [dict(r._mapping) for r in rows]


async def test_a_login_link_signs_in_once_with_a_safe_cookie(
    lite: Api, browsers: Callable[[], Browser]
) -> None:
    secret = await _link(lite, "approver")
    first = browsers()
    assert (await first.get("/ui/runs"))[2].headers["Location"] == "/ui/sign-in?next=/ui/runs"
    status, html, _ = await first.get(f"/ui/login/{secret}")  # (a link preview spends nothing)
    assert status == 200 and "Sign in" in html
    status, _, answer = await first.post(f"/ui/login/{secret}", {})
    assert status == 303 and answer.headers["Location"] == "/ui/runs"
    cookie = answer.cookies[COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Lax" and cookie["path"] == "/ui"
    assert not cookie["secure"]  # (plain http here; set over https)
    status, html, page = await first.get("/ui/runs")
    assert status == 200 and "approver" in html
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert page.headers["X-Frame-Options"] == "DENY"

    second = browsers()
    status, html, _ = await second.post(f"/ui/login/{secret}", {})
    assert status == 410 and "used already" in html
    assert (await second.get("/ui/runs"))[0] == 303
    old = await _link(lite, "approver", datetime.now(UTC) - timedelta(minutes=6))
    status, html, _ = await second.post(f"/ui/login/{old}", {})
    assert status == 410 and "expired" in html and "/deploy login" in html
    status, html, _ = await second.post("/ui/login/not-a-link", {})
    assert status == 410 and "not one of ours" in html
    refused = [(a["actor"], a["outcome"], a["reason"]) for a in _audit(lite, "web_sign_in")]
    assert refused == [
        ("approver", "accepted", "with a Slack login link"),
        ("approver", "refused", "this sign-in link was used already"),
        ("approver", "refused", "this sign-in link expired"),
        ("unknown", "refused", "this sign-in link is not one of ours"),
    ]
    assert all(a["channel"] == "web" for a in _audit(lite, "web_sign_in"))


async def test_signing_out_ends_the_session_for_good(lite: Api, browsers: Callable[[], Browser]) -> None:
    me = browsers()
    status, html, _ = await me.post("/ui/sign-in", {"token": "wrong", "next": "/ui/runs"})
    assert status == 401 and "not valid" in html
    await me.sign_in_with(lite, "viewer")
    kept = me.session.cookie_jar.filter_cookies(URL(me.base + "/ui/runs"))[COOKIE].value
    assert (await me.post("/ui/sign-out", {"csrf": "forged"}))[0] == 403  # still signed in
    assert (await me.get("/ui/runs"))[0] == 200
    status, _, answer = await me.post("/ui/sign-out", {"csrf": await me.csrf("/ui/runs")})
    assert status == 303 and answer.headers["Location"] == "/ui/sign-in"
    replay = browsers()
    status, _, _ = await replay.get("/ui/runs", cookies={COOKIE: kept})
    assert status == 303  # the old cookie opens nothing
    assert [a["outcome"] for a in _audit(lite, "web_sign_out")] == ["accepted"]


async def test_a_gate_is_approved_from_the_run_page_with_the_same_rules_as_slack(
    start_api: StartApi, sqlite_url: str
) -> None:
    api = await start_api(sqlite_url, {"gated": gated()})
    run = await api.trigger("gated")
    ref = run["ref"]
    await api.wait(ref, lambda r: r["status"] == "waiting")
    page = f"/ui/runs/gated/{run['number']}"
    deployer, viewer, approver = Browser(api), Browser(api), Browser(api)
    try:
        for browser, who in ((deployer, "deployer"), (viewer, "viewer"), (approver, "approver")):
            await browser.sign_in_with(api, who)
        status, html, _ = await viewer.get(page)
        assert status == 200 and "Approve" not in html  # a viewer sees no button...
        form = {"csrf": await viewer.csrf(page), "gate": "production"}
        status, html, _ = await viewer.post(page + "/approve", form)  # ...and pressing it anyway
        assert status == 403 and "viewer did not hold the approver role" in html
        form = {"csrf": await deployer.csrf(page), "gate": "production"}
        status, html, _ = await deployer.post(page + "/approve", form)  # separation of duties
        assert status == 403 and "triggered" in html
        status, _, _ = await approver.post(page + "/approve", {"gate": "production", "comment": "ok"})
        assert status == 403  # no CSRF token: nothing changes
        assert (await api.run(ref))["status"] == "waiting"

        form = {"csrf": await approver.csrf(page), "gate": "production", "comment": "looks right"}
        status, _, answer = await approver.post(page + "/approve", form)
        assert status == 303 and answer.headers["Location"] == page
        done = await api.wait(ref)
        gate = done["stages"][1]["gate"]
        assert done["status"] == "succeeded" and gate["approvals"][0]["by"] == "approver"
        status, html, _ = await approver.get(page)
        assert "Approved by approver" in html and "looks right" in html
    finally:
        for browser in (deployer, viewer, approver):
            await browser.session.close()
    audited = [(a["actor"], a["channel"], a["outcome"]) for a in _audit(api, "approve_gate")]
    assert audited == [
        ("viewer", "web", "rejected"),
        ("deployer", "web", "rejected"),
        ("approver", "web", "accepted"),
    ]
    forged = [(a["actor"], a["outcome"], a["target"]) for a in _audit(api, "web_form")]
    assert forged == [("approver", "refused", f"/ui/runs/gated/{run['number']}/approve")]


async def test_what_people_typed_and_jobs_wrote_is_escaped(start_api: StartApi, sqlite_url: str) -> None:
    api = await start_api(sqlite_url, {"noisy": NOISY, "gated": gated()})
    reply = await api.post("/pipelines/noisy/runs", "deployer", json={"parameters": {"note": SCRIPT}})
    assert reply.status == 202, reply.text
    run = await api.wait(reply.json["ref"])
    gate = await api.trigger("gated")
    await api.wait(gate["ref"], lambda r: r["status"] == "waiting")
    path = f"/runs/{gate['id']}/gates/production/reject"
    assert (await api.post(path, "approver", json={"comment": SCRIPT})).status == 200
    me = Browser(api)
    try:
        await me.sign_in_with(api, "viewer")
        page = f"/ui/runs/noisy/{run['number']}"
        status, html, _ = await me.get(page)
        assert status == 200 and SCRIPT not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        status, text, answer = await me.get(page + "/jobs/s/j/log.events")
        assert status == 200 and answer.content_type == "text/event-stream"
        followed = _events(text)  # (the run has finished: all of it, then the end)
        assert [e for e, _, _ in followed] == ["text", "end"] and followed[0][2] == f"{SCRIPT}\ndone\n"
        again = {"Last-Event-ID": followed[0][1]}  # a reconnect goes on after what it had
        status, text, _ = await me.get(page + "/jobs/s/j/log.events", headers=again)
        assert [e for e, _, _ in _events(text)] == ["end"]
        status, text, answer = await me.get(page + "/jobs/s/j/log")
        assert status == 200 and text == f"{SCRIPT}\ndone\n"
        assert answer.headers["Content-Type"].startswith("text/plain")
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert "attachment" in answer.headers["Content-Disposition"]
        status, html, _ = await me.get(f"/ui/runs/gated/{gate['number']}")  # the rejection's reason
        assert status == 200 and SCRIPT not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        status, html, _ = await me.get("/ui/runs/noisy/999")
        assert status == 404 and "no run noisy#999" in html
        status, html, _ = await me.get("/ui/runs/noisy/99999999999999999999999")
        assert status == 404 and "no run noisy#99999999999999999999999" in html
    finally:
        await me.session.close()


async def test_housekeeping_forgets_spent_links_and_ended_sessions_but_not_the_audit(
    lite: Api, browsers: Callable[[], Browser]
) -> None:
    me = browsers()
    await me.sign_in_with(lite, "viewer")
    await me.post("/ui/sign-out", {"csrf": await me.csrf("/ui/runs")})
    await _link(lite, "approver")  # never used
    other = browsers()
    await other.sign_in_with(lite, "approver")  # still signed in
    keeping = lite.client.app[HOUSEKEEPING]  # type: ignore[index]
    await keeping.sweep()  # the ended session goes (the hourly pass may have taken it already)
    assert _rows(lite) == (1, 1)  # the link still valid, the session still signed in
    swept = await keeping.sweep(datetime.now(UTC) + timedelta(days=2))
    assert swept.web_sign_ins == 2 and _rows(lite) == (0, 0)  # both expired by then
    assert len(_audit(lite, "web_sign_in")) == 2 and len(_audit(lite, "web_sign_out")) == 1


async def test_a_long_log_is_shown_from_its_last_mebibyte_and_downloaded_whole(
    start_api: StartApi, sqlite_url: str
) -> None:
    """3 MB of output: the page follows only its last part (and says how much it left out);
    the download has all of it."""
    writer = one_job("long", """["python3", "-c", "print(('x' * 99 + '\\\\n') * 30000, end='')"]""")
    api = await start_api(sqlite_url, {"long": writer}, max_log_bytes=8 << 20)
    run = await api.wait((await api.trigger("long"))["ref"])
    assert run["status"] == "succeeded", run
    me = Browser(api)
    try:
        await me.sign_in_with(api, "viewer")
        page = f"/ui/runs/long/{run['number']}/jobs/s/j"
        status, text, _ = await me.get(f"{page}/log.events")
        followed = _events(text)
        assert followed[0][0] == "skipped" and followed[-1][0] == "end"
        skipped = int(json.loads(followed[0][2]))
        shown = "".join(data for event, _, data in followed if event == "text")
        assert 1 << 20 <= len(shown) < (1 << 20) + (256 << 10) and shown.endswith("x\n")
        assert skipped + len(shown) == 3_000_000
        status, whole, _ = await me.get(f"{page}/log")
        assert status == 200 and len(whole) == 3_000_000
    finally:
        await me.session.close()


async def test_the_board_says_what_runs_where_with_its_lock_freeze_history_and_dora(
    start_api: StartApi, sqlite_url: str
) -> None:
    soon = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    environments = {
        "staging": {},
        "production": {"freezes": [{"from": soon.isoformat(), "to": (soon + timedelta(days=1)).isoformat(),
                                    "reason": "launch week"}]},
    }  # fmt: skip
    deploy = one_job("ship", '["true"]', environment="production", head="parameters:\n  - {name: ref}")
    api = await start_api(sqlite_url, {"ship": deploy}, environments=environments)
    for ref in ("1111111", "2222222"):
        reply = await api.post(
            "/pipelines/ship/runs", "deployer", json={"parameters": {"ref": ref}, "revision": ref}
        )
        assert (await api.wait(reply.json["ref"]))["status"] == "succeeded"
    locked = await api.post("/environments/production/lock", "deployer", json={"reason": "db <migration>"})
    assert locked.status in (200, 201), locked.text
    me = Browser(api)
    try:
        await me.sign_in_with(api, "viewer")
        status, html, _ = await me.get("/ui/environments")
        _, mine, _ = await me.get(
            "/ui/runs?pipeline=ship&status=succeeded&environment=production&triggered_by=deployer"
        )
        _, nobody, _ = await me.get("/ui/runs?triggered_by=nobody")
    finally:
        await me.session.close()
    assert 'href="/ui/runs/ship/1"' in mine and 'href="/ui/runs/ship/2"' in mine
    assert "No runs match these filters." in nobody and "Older runs" not in mine
    assert status == 200
    production = html[html.index('id="env-production"') :]
    assert 'href="/ui/runs/ship/2"' in production and "<code>2222222</code>" in production
    assert "deployed by deployer" in production
    assert "locked by deployer" in production and "db &lt;migration&gt;" in production
    assert "next freeze from" in production and "launch week" in production
    assert "2 deployments" in production and "0 of 2 deployments" in production
    assert production.count('class="bar succeeded" x=') >= 2  # the history, two green bars
    staging = html[html.index('id="env-staging"') : html.index('id="env-production"')]
    assert "Nothing deployed yet." in staging and "no freeze within 14 days" in staging


async def test_roll_back_promote_and_lock_from_the_board(
    start_api: StartApi, sqlite_url: str, tmp_path: Any
) -> None:
    shop = SHOP.replace("{ledger}", str(tmp_path / "ledger"))
    api = await start_api(sqlite_url, {"shop": shop}, environments={"staging": {}, "production": {}})
    for version in ("1.0.0", "2.0.0"):
        run = await api.trigger("shop", parameters={"version": version})
        assert (await api.wait(run["id"]))["status"] == "succeeded"
    deployer, viewer = Browser(api), Browser(api)
    try:
        await deployer.sign_in_with(api, "deployer")
        await viewer.sign_in_with(api, "viewer")
        board = "/ui/environments"
        status, html, _ = await viewer.get(board)
        assert "Roll back" not in html and "Lock</button>" not in html  # a viewer acts on nothing
        status, html, _ = await viewer.post(
            "/ui/environments/production/lock", {"csrf": await viewer.csrf(board), "reason": "x"}
        )
        assert status == 403 and "may not lock environments" in html

        # a rollback asks first: what it goes back to, then the run
        csrf = await deployer.csrf(board)
        status, html, _ = await deployer.post("/ui/environments/production/rollback", {"csrf": csrf})
        assert status == 200 and "Roll back to shop@1.0.0" in html and "shop@2.0.0" in html
        status, _, answer = await deployer.post(
            "/ui/environments/production/rollback", {"csrf": csrf, "to": "shop@1.0.0"}
        )
        assert status == 303
        rolled = await api.wait(answer.headers["Location"].rsplit("/", 1)[-1].join(["shop#", ""]))
        assert (rolled["kind"], rolled["status"]) == ("rollback", "succeeded")
        status, html, _ = await deployer.get(board)
        assert "shop@1.0.0</a>" in html[html.index('id="env-production"') :]
        assert "rolled back" in html or "locked by" in html  # the rollback's lock
        assert (await deployer.post("/ui/environments/production/unlock", {"csrf": csrf}))[0] == 303

        # what runs in staging goes to production, without a rebuild
        status, html, _ = await deployer.get(board)
        assert "Promote shop@2.0.0 to production" in html
        status, _, answer = await deployer.post("/ui/environments/staging/promote", {"csrf": csrf})
        assert status == 303
        promoted = await api.wait(answer.headers["Location"].rsplit("/", 1)[-1].join(["shop#", ""]))
        assert (promoted["kind"], promoted["status"]) == ("promotion", "succeeded")
        status, html, _ = await deployer.get(board)
        assert "shop@2.0.0</a>" in html[html.index('id="env-production"') :]

        form = {"csrf": csrf, "reason": "db migration", "duration": "2h"}
        assert (await deployer.post("/ui/environments/production/lock", form))[0] == 303
        status, html, _ = await deployer.get(board)
        assert "production is locked by deployer" in html and "Unlock</button>" in html
        form = {"csrf": csrf, "reason": "me too", "duration": "forever"}
        status, html, _ = await deployer.post("/ui/environments/staging/lock", form)
        assert status == 400 and "forever" in html
    finally:
        await deployer.session.close()
        await viewer.session.close()
    assert [(a["actor"], a["outcome"]) for a in _audit(api, "web_lock_environments")] == [
        ("viewer", "refused")
    ]
    assert [a["channel"] for a in _audit(api, "trigger_run") if a["actor"] == "deployer"][-2:] == [
        "web",
        "web",
    ]


async def test_the_run_list_pages_back_through_older_runs_keeping_its_filters(
    lite: Api, browsers: Callable[[], Browser], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bot.web.pages.LIST_LIMIT", 1, raising=True)
    for _ in range(2):
        await lite.wait((await lite.trigger("quick"))["ref"])
    me = browsers()
    await me.sign_in_with(lite, "viewer")
    _, first, _ = await me.get("/ui/runs?pipeline=quick")
    older = re.search(r'<a href="([^"]+)">Older runs</a>', first)
    assert 'href="/ui/runs/quick/2"' in first and older is not None
    link = older.group(1).replace("&amp;", "&")
    assert "pipeline=quick" in link
    _, second, _ = await me.get(link)
    assert 'href="/ui/runs/quick/1"' in second and "quick/2" not in second and "Older runs" not in second
    status, broken, _ = await me.get("/ui/runs?before=not-a-cursor")
    assert status == 400 and "broken" in broken


@pytest.mark.parametrize(
    "path",
    [
        "/ui/runs?pipeline=%00",
        "/ui/runs?triggered_by=%C3%A9%00",
        "/ui/runs?before=1.%00",
        "/ui/runs/quick%00/1",
        "/ui/runs/quick%00/1/jobs/s/j/log.events",
    ],
)
async def test_an_address_holding_nul_is_a_page_saying_so_not_a_server_error(api: Api, path: str) -> None:
    """PostgreSQL refuses NUL in text: such a filter, cursor or run name would fail the query."""
    me = Browser(api)
    try:
        await me.sign_in_with(api, "viewer")
        status, html, answer = await me.get(path)
    finally:
        await me.session.close()
    assert status == 400 and "NUL" in html, html
    assert answer.headers["Content-Security-Policy"].startswith("default-src 'none'")


async def test_the_weekly_chart_counts_what_the_deployment_frequency_counts(
    start_api: StartApi, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every successful change in the window, not the drawn history's last few deployments (of
    any outcome): the bars add up to the frequency beside them."""
    monkeypatch.setattr("bot.web.board.HISTORY", 1, raising=True)
    ship = one_job("ship", '["true"]', environment="production")
    broken = one_job("broken", '["false"]', environment="production")
    api = await start_api(sqlite_url, {"ship": ship, "broken": broken})
    for pipeline in ("ship", "ship", "broken"):
        await api.wait((await api.trigger(pipeline))["ref"])
    html = await web_page(api, "/ui/environments")
    production = html[html.index('id="env-production"') :]
    chart = re.search(r'aria-label="deployments per week: ([0-9, ]+)"', production)
    assert chart is not None, production
    weekly = [int(n) for n in chart.group(1).split(", ")]
    assert weekly[-1] == 2 and sum(weekly) == 2 and len(weekly) == 5  # (30 days: 4 weeks and 2 days)
    assert "(2 deployments)" in production and "1 of 3 deployments" in production


async def test_a_cookie_holding_bytes_that_are_not_utf8_is_sent_to_sign_in(lite: Api) -> None:
    """Such a cookie (a stray one from another app on the host, or forged) is no session: the
    page asks to sign in rather than failing while hashing it."""
    assert lite.client.port is not None
    reader, writer = await asyncio.open_connection(lite.client.host, lite.client.port)
    try:
        writer.write(b"GET /ui/runs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n")
        writer.write(b"Cookie: " + COOKIE.encode() + b"=\xff\xfe\r\n\r\n")
        answer = await reader.read()
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 303 ") and b"Location: /ui/sign-in?next=/ui/runs" in answer, answer
