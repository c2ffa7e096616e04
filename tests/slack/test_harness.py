"""The Slack harness against a minimal Bolt app: signed requests in, Web API calls out to the fake."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from tests.slack import signing
from tests.slack.fake_slack import FakeSlack, settle_bolt_tasks

SECRET = "shipyard-test-signing-secret"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@dataclass
class Bot:
    app: AsyncApp
    url: str
    session: aiohttp.ClientSession
    seen: list[Any] = field(default_factory=list)

    async def post(self, request: tuple[bytes, dict[str, str]]) -> tuple[int, str]:
        body, headers = request
        async with self.session.post(self.url, data=body, headers=headers) as resp:
            return resp.status, await resp.text()


def web_client(fake: FakeSlack) -> AsyncWebClient:
    return AsyncWebClient(
        token="xoxb-test",
        base_url=fake.base_url,
        retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=2)],
    )


@pytest.fixture
async def bot(fake: FakeSlack) -> AsyncIterator[Bot]:
    app = AsyncApp(signing_secret=SECRET, client=web_client(fake))

    async def slack_events(request: web.Request) -> web.Response:
        return await to_aiohttp_response(await app.async_dispatch(await to_bolt_request(request)))

    web_app = web.Application()
    web_app.router.add_post("/slack/events", slack_events)
    runner = web.AppRunner(web_app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as session:
        yield Bot(app, f"http://127.0.0.1:{port}/slack/events", session)
        await settle_bolt_tasks()
    await runner.cleanup()


def command(fake: FakeSlack, text: str = "api prod 1.4.2", **kw: Any) -> signing.SignedRequest:
    return signing.slash_command(
        SECRET, text, user_id="U1", channel_id="C1", response_url=fake.response_url(), **kw
    )


# ---------------------------------------------------------------------- HTTP mode through Bolt


async def test_slash_command_is_acked_and_its_listener_posts(fake: FakeSlack, bot: Bot) -> None:
    @bot.app.command("/deploy")
    async def deploy(ack: Any, command: dict[str, str], client: AsyncWebClient) -> None:
        await ack()
        bot.seen.append(command)
        await client.chat_postMessage(channel=command["channel_id"], text=f"Deploying {command['text']}")

    started = time.monotonic()
    status, text = await bot.post(command(fake, trigger_id="1.2.abc"))
    assert (status, text) == (200, "")
    assert time.monotonic() - started < 3

    call = await fake.wait_for("chat.postMessage")
    assert call.ok and call.token == "xoxb-test" and call.content_type == "application/json"
    assert call.args["channel"] == "C1" and call.args["text"] == "Deploying api prod 1.4.2"
    assert (call.args["channel"], call.response["ts"]) in fake.messages
    [seen] = bot.seen
    assert seen["command"] == "/deploy" and seen["text"] == "api prod 1.4.2"
    assert seen["trigger_id"] == "1.2.abc" and seen["is_enterprise_install"] == "false"
    assert [c.method for c in fake.calls] == ["auth.test", "chat.postMessage"]  # auth.test once, cached


def test_slash_command_body_is_encoded_like_slack() -> None:
    body, headers = signing.slash_command(
        SECRET, "api prod", user_id="U1", channel_id="C1", response_url="http://x/r/1", trigger_id="t"
    )
    assert b"&command=%2Fdeploy&text=api+prod&" in body
    assert body.startswith(b"token=verification_token&team_id=T111&team_domain=")
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert SignatureVerifier(SECRET).is_valid_request(body, headers)


def test_signature_matches_slacks_known_answer() -> None:
    vector = json.loads((FIXTURES / "signing.known_answer.json").read_text())
    headers = signing.sign(
        vector["signing_secret"], vector["body"].encode(), signing.FORM, timestamp=vector["timestamp"]
    )
    assert headers["X-Slack-Signature"] == vector["valid_signature"]


@pytest.mark.parametrize(
    "tamper",
    [
        lambda req: signing.with_wrong_secret(req),
        lambda req: signing.with_stale_timestamp(req, SECRET),
        lambda req: signing.SignedRequest(req.body + b"&x=1", req.headers),
    ],
    ids=["wrong-secret", "stale-timestamp", "body-changed"],
)
async def test_bad_signatures_are_rejected(fake: FakeSlack, bot: Bot, tamper: Any) -> None:
    @bot.app.command("/deploy")
    async def deploy(ack: Any) -> None:
        bot.seen.append("ran")
        await ack()

    status, text = await bot.post(tamper(command(fake)))
    assert status == 401 and json.loads(text) == {"error": "invalid request"}
    assert bot.seen == [] and fake.calls == []
    assert (await bot.post(command(fake)))[0] == 200  # the untampered request passes


async def test_rate_limited_call_is_retried_after_retry_after(fake: FakeSlack, bot: Bot) -> None:
    fake.rate_limit_next("chat.postMessage", retry_after=1)

    @bot.app.command("/deploy")
    async def deploy(ack: Any, client: AsyncWebClient) -> None:
        await ack()
        await client.chat_postMessage(channel="C1", text="hello")

    assert (await bot.post(command(fake)))[0] == 200
    await fake.wait_for("chat.postMessage", lambda c: c.ok)
    first, second = fake.calls_to("chat.postMessage")
    assert (first.status, first.response) == (429, {"ok": False, "error": "ratelimited"})
    assert second.ok and second.args == first.args


async def test_rate_limit_surfaces_once_retries_are_spent(fake: FakeSlack) -> None:
    fake.rate_limit_next("users.info", retry_after=0, times=3)
    with pytest.raises(SlackApiError) as err:
        await web_client(fake).users_info(user="U1")
    assert err.value.response.status_code == 429 and err.value.response.headers["Retry-After"] == "0"
    assert len(fake.calls_to("users.info")) == 3


async def test_block_actions_reach_the_action_listener(fake: FakeSlack, bot: Bot) -> None:
    posted = await web_client(fake).chat_postMessage(channel="C1", text="Deploy api 1.4.2?")

    @bot.app.action("approve")
    async def approve(ack: Any, body: dict[str, Any], action: dict[str, Any], client: AsyncWebClient) -> None:
        await ack()
        bot.seen.append((body, action))
        await client.chat_update(channel=body["channel"]["id"], ts=body["message"]["ts"], text="Approved")

    request = signing.block_actions(
        SECRET,
        user_id="U2",
        action_id="approve",
        value="run-42",
        channel_id="C1",
        message_ts=posted["ts"],
        response_url=fake.response_url(),
        trigger_id="1.2.press",
    )
    assert await bot.post(request) == (200, "")
    update = await fake.wait_for("chat.update")
    assert update.ok and fake.messages[("C1", posted["ts"])]["text"] == "Approved"
    [(body, action)] = bot.seen
    assert action["value"] == "run-42" and body["user"]["id"] == "U2"
    assert body["container"] == {
        "type": "message",
        "message_ts": posted["ts"],
        "channel_id": "C1",
        "is_ephemeral": False,
    }


async def test_view_submission_errors_round_trip(fake: FakeSlack, bot: Bot) -> None:
    @bot.app.view("deploy_form")
    async def submit(ack: Any, view: dict[str, Any]) -> None:
        version = view["state"]["values"]["version"]["version_input"]["value"]
        env = view["state"]["values"]["env"]["env_select"]["selected_option"]["value"]
        bot.seen.append((version, env, view["private_metadata"]))
        await ack(response_action="errors", errors={"version": f"No version {version}"})

    request = signing.view_submission(
        SECRET,
        user_id="U1",
        callback_id="deploy_form",
        values={
            "version": {"version_input": {"type": "plain_text_input", "value": "9.9.9"}},
            "env": {"env_select": {"type": "static_select", "selected_option": {"value": "prod"}}},
        },
        private_metadata='{"service": "api"}',
    )
    status, text = await bot.post(request)
    assert status == 200
    assert json.loads(text) == {"response_action": "errors", "errors": {"version": "No version 9.9.9"}}
    assert bot.seen == [("9.9.9", "prod", '{"service": "api"}')]


async def test_app_home_opened_publishes_the_home_tab(fake: FakeSlack, bot: Bot) -> None:
    @bot.app.event("app_home_opened")
    async def home(event: dict[str, Any], client: AsyncWebClient, request: Any) -> None:
        bot.seen.append(request.headers.get("x-slack-retry-num"))
        blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*Recent deploys*"}}]
        await client.views_publish(user_id=event["user"], view={"type": "home", "blocks": blocks})

    event = {"type": "app_home_opened", "user": "U1", "channel": "D1", "tab": "home"}
    assert await bot.post(signing.event_callback(SECRET, event, event_id="Ev1")) == (200, "")
    call = await fake.wait_for("views.publish")
    assert call.ok and fake.home_views["U1"]["blocks"][0]["text"]["text"] == "*Recent deploys*"

    # Slack's retry of the same event: same event_id, retry headers (Bolt does not deduplicate)
    assert (await bot.post(signing.event_callback(SECRET, event, event_id="Ev1", retry_num=1)))[0] == 200
    await fake.wait_for_count("views.publish", 2)
    assert bot.seen == [None, ["1"]]


async def test_url_verification_is_answered(bot: Bot) -> None:
    status, text = await bot.post(signing.url_verification(SECRET, "chal-1"))
    assert (status, json.loads(text)) == (200, {"challenge": "chal-1"})


async def test_respond_posts_to_the_response_url(fake: FakeSlack, bot: Bot) -> None:
    @bot.app.command("/deploy")
    async def deploy(ack: Any, respond: Any) -> None:
        await ack(text="Accepted", response_type="ephemeral")
        await respond(text="Deployed api 1.4.2", response_type="in_channel")

    url = fake.response_url("cmd1")
    request = signing.slash_command(SECRET, "api", user_id="U1", channel_id="C1", response_url=url)
    status, text = await bot.post(request)
    assert (status, json.loads(text)) == (200, {"text": "Accepted", "response_type": "ephemeral"})
    post = await fake.wait_response(url)
    assert post.body == {"text": "Deployed api 1.4.2", "response_type": "in_channel"}
    assert post.token == "cmd1"


# ---------------------------------------------------------------------- Socket Mode


async def test_socket_mode_delivers_a_slash_command_and_acks_it(fake: FakeSlack) -> None:
    app = AsyncApp(client=web_client(fake))  # no signing secret: Socket Mode requests are not signed

    @app.command("/deploy")
    async def deploy(ack: Any, command: dict[str, str], client: AsyncWebClient) -> None:
        await ack(text=f"Queued {command['text']}")
        await client.chat_postMessage(channel=command["channel_id"], text="started")

    @app.event("app_mention")
    async def mention(event: dict[str, Any]) -> None:
        seen.append(event["user"])

    seen: list[str] = []
    handler = AsyncSocketModeHandler(app, app_token="xapp-test")
    await handler.connect_async()
    try:
        assert fake.calls_to("apps.connections.open")[0].token == "xapp-test"
        assert fake.socket_connected
        payload = signing.slash_command_payload(
            "api prod", user_id="U1", channel_id="C1", response_url=fake.response_url()
        )
        envelope_id = await fake.send_envelope("slash_commands", payload)
        ack = await fake.wait_ack(envelope_id)
        assert ack == {"envelope_id": envelope_id, "payload": {"text": "Queued api prod"}}
        assert (await fake.wait_for("chat.postMessage")).args["text"] == "started"

        event = signing.event_callback_payload({"type": "app_mention", "user": "U1"}, event_id="Ev9")
        envelope_id = await fake.send_envelope("events_api", event, retry_attempt=1)
        assert await fake.wait_ack(envelope_id) == {"envelope_id": envelope_id}
        await settle_bolt_tasks()
        assert seen == ["U1"]

        await fake.send_disconnect("refresh_requested")  # the client reconnects with a fresh URL
        await fake.wait_connected(count=2)
        assert len(fake.calls_to("apps.connections.open")) == 2
        envelope_id = await fake.send_envelope("events_api", event)
        assert await fake.wait_ack(envelope_id) == {"envelope_id": envelope_id}
        await settle_bolt_tasks()
        assert seen == ["U1", "U1"]
    finally:
        await handler.close_async()


# ---------------------------------------------------------------------- the fake on its own


async def test_fake_web_api_rules(fake: FakeSlack) -> None:
    client = web_client(fake)
    with pytest.raises(SlackApiError, match="not_authed"):
        await AsyncWebClient(base_url=fake.base_url).auth_test()
    with pytest.raises(SlackApiError, match="not_allowed_token_type"):
        await AsyncWebClient(token="xapp-1", base_url=fake.base_url).chat_postMessage(channel="C", text="x")
    with pytest.raises(SlackApiError, match="unknown_method"):
        await client.api_call("chat.teleport")
    with pytest.raises(SlackApiError, match="message_not_found"):
        await client.chat_update(channel="C1", ts="1.000001", text="x")

    first = await client.chat_postMessage(channel="C1", text="a")
    second = await client.chat_postMessage(channel="C1", text="b")
    assert first["ts"] < second["ts"] and first["ts"].startswith("1700000000.")
    eph = await client.chat_postEphemeral(channel="C1", user="U1", text="psst")
    assert eph["message_ts"] > second["ts"]

    fake.usergroups["S123"] = ["U1", "U2"]
    assert (await client.usergroups_users_list(usergroup="S123"))["users"] == ["U1", "U2"]
    assert fake.calls[-1].http_method == "GET" and fake.calls[-1].args == {"usergroup": "S123"}
    with pytest.raises(SlackApiError, match="no_such_subteam"):
        await client.usergroups_users_list(usergroup="S999")
    fake.users["U2"] = {"name": "bob"}
    fake.users["U3"] = None
    assert (await client.users_info(user="U2"))["user"]["name"] == "bob"
    with pytest.raises(SlackApiError, match="user_not_found"):
        await client.users_info(user="U3")
    assert (await client.conversations_info(channel="C1"))["channel"]["id"] == "C1"

    fake.fail_next("chat.postMessage", "channel_not_found")
    with pytest.raises(SlackApiError, match="channel_not_found"):
        await client.chat_postMessage(channel="C404", text="x")


async def test_fake_channel_set_to_none_refuses_every_chat_call(fake: FakeSlack) -> None:
    client = web_client(fake)
    posted = await client.chat_postMessage(channel="C0GONE", text="before")
    fake.channels["C0GONE"] = None  # deleted, or the bot was removed from it
    refused: list[Callable[[], Awaitable[AsyncSlackResponse]]] = [
        lambda: client.chat_postMessage(channel="C0GONE", text="x"),
        lambda: client.chat_postEphemeral(channel="C0GONE", user="U1", text="x"),
        lambda: client.chat_update(channel="C0GONE", ts=posted["ts"], text="x"),
        lambda: client.chat_delete(channel="C0GONE", ts=posted["ts"]),
        lambda: client.conversations_info(channel="C0GONE"),
    ]
    for call in refused:
        with pytest.raises(SlackApiError, match="channel_not_found"):
            await call()
    assert [c.response for c in fake.calls[-5:]] == [{"ok": False, "error": "channel_not_found"}] * 5
    assert (await client.chat_postMessage(channel="C0HERE", text="y"))["ok"]  # other channels are known


async def test_fake_views_and_triggers(fake: FakeSlack) -> None:
    client = web_client(fake)
    modal = {
        "type": "modal",
        "callback_id": "f",
        "title": {"type": "plain_text", "text": "Deploy"},
        "blocks": [],
    }
    opened = (await client.views_open(trigger_id="1.2.t", view=modal))["view"]
    with pytest.raises(SlackApiError, match="trigger_exchanged"):
        await client.views_open(trigger_id="1.2.t", view=modal)
    updated = (await client.views_update(view_id=opened["id"], hash=opened["hash"], view=modal))["view"]
    assert updated["id"] == opened["id"] and updated["hash"] != opened["hash"]
    with pytest.raises(SlackApiError, match="hash_conflict"):
        await client.views_update(view_id=opened["id"], hash=opened["hash"], view=modal)
    pushed = (await client.views_push(trigger_id="1.2.u", view=modal))["view"]
    assert pushed["id"] != opened["id"]
    with pytest.raises(SlackApiError, match="invalid_arguments"):
        await client.views_publish(user_id="U1", view={"type": "home", "blocks": [{}] * 101})


async def test_fake_response_url_allows_five_uses(fake: FakeSlack) -> None:
    url = fake.response_url()
    async with aiohttp.ClientSession() as session:
        results = []
        for n in range(6):
            async with session.post(url, json={"text": str(n)}) as resp:
                results.append((resp.status, await resp.text()))
    assert results == [(200, "ok")] * 5 + [(404, "used_url")]
    assert [p.body["text"] for p in fake.responses_to(url) if p.status == 200] == ["0", "1", "2", "3", "4"]
