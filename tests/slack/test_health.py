"""Environment health in Slack, end to end through the real Bolt endpoint (signed requests, the
fake Slack) with health measured for real by the server's own loop (a command check reading a
file): each change is posted once in the default channel (a failed send is tried again),
`/deploy envs`, `/deploy why`, App Home, the deploy question and the approval card show it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.access import Role
from core.model import RunState
from storage.reads import Reads, RunFilter
from tests.pipelines import ship
from tests.slack.fake_slack import FakeSlack
from tests.slack.harness import ALICE, CHANNEL, RELEASE_MANAGERS, Bot, StartBot, blocks_of, button, until
from tests.slack.test_cards_home import _open_home

GREEN = ":large_green_circle: *production* is healthy (was unknown): the check passes"
RED = ":red_circle: *production* is unhealthy (was healthy): smoke: exit 1 (1 in a row)"


def _health_posts(fake: FakeSlack) -> list[Any]:
    return [c for c in fake.calls_to("chat.postMessage") if "*production* is " in c.args.get("text", "") or
            "production is " in c.args.get("text", "")]  # fmt: skip


def _said(fake: FakeSlack, words: str) -> Any:
    return next((c for c in _health_posts(fake) if c.ok and words in json.dumps(c.args.get("blocks"))), None)


async def test_health_shows_where_people_look(start_bot: StartBot, fake: FakeSlack, tmp_path: Path) -> None:
    (tmp_path / "smoke").write_text("0")
    smoke = {"command": ["sh", "-c", f"exit $(cat {tmp_path / 'smoke'})"], "interval": "1s", "timeout": "1s"}
    environments = {
        "production": {
            "confirm": True,
            "checks": {"smoke": smoke},
            "health": {"checks": ["smoke"], "failure_limit": 1},
            "health_settle": "0s",  # (every change posted at once: damping is tested below)
            "block_when_unhealthy": True,
        }
    }
    fake.fail_next("chat.postMessage", "internal_error")  # the first post (the first change) fails once
    bot = await start_bot(
        {"shop": ship(name="shop", compare=False)},
        {ALICE: [Role.ADMIN, RELEASE_MANAGERS]},
        environments=environments,
        slack_channel=CHANNEL,
    )
    green = await until(lambda: _said(fake, GREEN), what="the healthy post")
    assert green.args["channel"] == CHANNEL and "thread_ts" not in green.args
    tries = [c for c in _health_posts(fake) if GREEN in json.dumps(c.args.get("blocks"))]
    assert [c.ok for c in tries] == [False, True]  # tried again after the failure, posted once
    envs = await bot.say(ALICE, "envs")
    assert "• *production*: nothing yet · :large_green_circle: healthy" in envs["text"]

    (tmp_path / "smoke").write_text("1")
    red = await until(lambda: _said(fake, RED), what="the unhealthy post")
    assert red.args["text"] == "production is unhealthy (was healthy)"
    envs = await bot.say(ALICE, "envs")
    assert "· :red_circle: unhealthy: smoke: exit 1 (1 in a row)" in envs["text"]
    why = (await bot.say(ALICE, "why production"))["text"]
    assert (
        "• *health*: production is unhealthy since " in why
        and ": smoke: exit 1 (1 in a row) — clears:" in why
    )
    home = json.dumps((await _open_home(bot, ALICE))["blocks"])
    assert ":red_circle: production is unhealthy: smoke: exit 1 (1 in a row)" in home

    # the deploy question, then the approval card, say it too
    asked = await bot.say(ALICE, "run shop version=1.0.0")
    assert "production is unhealthy: smoke: exit 1 (1 in a row)" in json.dumps(asked["blocks"])
    deploy = button(asked, "run_confirm")
    await bot.press(ALICE, deploy["action_id"], deploy["value"], "1.0")
    ref = await until(lambda: next((s.run.ref for s in _runs(bot)), None), what="the run")
    card = await bot.gate_card(ref)
    contexts = [b for b in blocks_of(card) if b["type"] == "context"]
    assert ":red_circle: production is unhealthy: smoke: exit 1 (1 in a row)" in json.dumps(contexts)
    assert len([c for c in _health_posts(fake) if c.ok]) == 2  # each change posted once


def _runs(bot: Bot) -> list[RunState]:
    return Reads(bot.store).runs(RunFilter(pipeline="shop"), None, 5)


async def test_a_health_change_is_posted_in_the_environments_channel_else_the_default(
    start_bot: StartBot, fake: FakeSlack, tmp_path: Path
) -> None:
    """``production`` names its channel (``slack_channel``): its changes go there, and only
    there; ``staging`` names none: its changes go to the default channel."""
    smoke = {"command": ["sh", "-c", "exit 0"], "interval": "1s", "timeout": "1s"}
    environments = {
        "staging": {"checks": {"smoke": smoke}, "health": ["smoke"], "health_settle": "0s"},
        "production": {
            "checks": {"smoke": smoke},
            "health": ["smoke"],
            "slack_channel": "C0PRODOPS",
            "health_settle": "0s",
        },
    }
    await start_bot(
        {"shop": ship(name="shop", compare=False)},
        {ALICE: [Role.ADMIN]},
        environments=environments,
        slack_channel=CHANNEL,
    )

    def posted(env: str) -> list[Any]:
        return [
            c
            for c in fake.calls_to("chat.postMessage")
            if c.ok and c.args.get("text") == f"{env} is healthy (was unknown)"
        ]

    await until(lambda: posted("production") and posted("staging"), what="both healthy posts")
    assert [c.args["channel"] for c in posted("production")] == ["C0PRODOPS"]
    assert [c.args["channel"] for c in posted("staging")] == [CHANNEL]


async def test_health_that_flaps_is_not_posted_and_a_change_that_holds_is(
    start_bot: StartBot, fake: FakeSlack, tmp_path: Path, db_url: str
) -> None:
    """``health_settle: 6s``: healthy → unhealthy → healthy within it posts nothing (the channel
    is not flooded by a flapping check); unhealthy that holds is posted once it held, as a
    change from what the channel last heard."""
    import sqlalchemy as sa

    from core.analysis import Health
    from storage.analyses import AnalysisStore
    from storage.tables import SlackPostRow

    (tmp_path / "smoke").write_text("0")
    smoke = {"command": ["sh", "-c", f"exit $(cat {tmp_path / 'smoke'})"], "interval": "1s", "timeout": "1s"}
    environments = {
        "production": {
            "checks": {"smoke": smoke},
            "health": {"checks": ["smoke"], "failure_limit": 1},
            "health_settle": "6s",
        }
    }
    bot = await start_bot(
        {}, {ALICE: [Role.ADMIN]}, environments=environments, slack_channel=CHANNEL, database_url=db_url
    )
    analyses = AnalysisStore(bot.store)
    await until(lambda: _said(fake, GREEN), timeout=30, what="the healthy post, once it held")

    def latest() -> Health | None:
        changes = analyses.history("production", None, 1)
        return changes[0].to_state if changes else None

    (tmp_path / "smoke").write_text("1")
    await until(lambda: latest() is Health.UNHEALTHY, timeout=30, what="unhealthy")
    (tmp_path / "smoke").write_text("0")
    await until(lambda: latest() is Health.HEALTHY, timeout=30, what="healthy again")
    back, dip = analyses.history("production", None, 2)
    assert (back.at - dip.at).total_seconds() < 6, "the machine was too slow for a flap within 6 s"

    def decided() -> bool:  # the flap's two planned posts were given up, not sent
        with bot.store.engine.connect() as conn:
            rows = conn.execute(sa.select(SlackPostRow.status).where(SlackPostRow.key.like("health:%"))).all()
        return len(rows) == 3 and sorted(r[0] for r in rows) == ["gave_up", "gave_up", "sent"]

    await until(decided, timeout=30, what="the flap's posts decided")
    assert [c.args["text"] for c in _health_posts(fake) if c.ok] == ["production is healthy (was unknown)"]

    (tmp_path / "smoke").write_text("1")
    red = await until(lambda: _said(fake, RED), timeout=30, what="the unhealthy post, once it held")
    assert red.args["text"] == "production is unhealthy (was healthy)"
    assert len([c for c in _health_posts(fake) if c.ok]) == 2
