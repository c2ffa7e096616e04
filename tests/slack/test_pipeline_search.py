"""The trigger form past 100 pipelines, end to end: Slack shows at most 100 options in a menu, so
the picker becomes an ``external_select`` and Slack asks Shipyard (a signed ``block_suggestion``
to the real Bolt endpoint) for the names matching what the person types. Picking one rebuilds
the form and submitting it starts the run, as with the plain menu."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bot.chat import forms
from core.access import Role
from storage.reads import Reads, RunFilter
from tests.pipelines import one_job
from tests.slack import signing
from tests.slack.harness import ALICE, SECRET, Bot, StartBot
from tests.slack.test_modal_confirm import _field, _open_form, _option, _pick, _submit

NAMES = [f"svc-{i:03d}" for i in range(120)]


@pytest.fixture
async def bot(start_bot: StartBot) -> Bot:
    return await start_bot({name: one_job(name) for name in NAMES}, {ALICE: [Role.DEPLOYER]})


async def _suggest(bot: Bot, view: dict[str, Any], typed: str) -> list[str]:
    """What the picker offers once ``typed`` is in it (Slack waits for the answer itself)."""
    payload = signing.block_suggestion_payload(
        user_id=ALICE, action_id=forms.PICK, block_id=forms.PIPELINE, value=typed, view=view
    )
    status, _, text = await bot.post(signing.interaction(SECRET, payload))
    assert status == 200, text
    options = json.loads(text)["options"]
    assert all(o["text"]["text"] == o["value"] for o in options)
    return [o["value"] for o in options]


async def test_past_100_pipelines_the_picker_finds_each_by_what_is_typed(bot: Bot) -> None:
    view = await _open_form(bot)
    picker = _field(view, forms.PIPELINE)["element"]
    assert picker["type"] == "external_select" and picker["min_query_length"] == 0
    assert "options" not in picker and picker["action_id"] == forms.PICK

    assert await _suggest(bot, view, "SVC-11") == [f"svc-11{i}" for i in range(10)]
    assert await _suggest(bot, view, "119") == ["svc-119"]  # past the first 100 too
    assert await _suggest(bot, view, "") == NAMES[:100]  # opened, nothing typed: Slack's most
    assert await _suggest(bot, view, "nothing-like-it\x00") == []

    picked = await _pick(bot, view, "svc-119")
    element = _field(picked, forms.PIPELINE)["element"]
    assert element["type"] == "external_select" and element["initial_option"] == _option("svc-119")
    assert await _submit(bot, picked, "svc-119", {}) is None  # the form closes: the run starts
    refs = [s.run.ref for s in Reads(bot.store).runs(RunFilter(), None, 10)]
    assert refs == ["svc-119#1"]


def test_the_picker_is_a_plain_menu_up_to_100_pipelines() -> None:
    plain = forms.trigger_view(NAMES[:100], "C1", None)["blocks"][0]["element"]
    assert plain["type"] == "static_select" and [o["value"] for o in plain["options"]] == NAMES[:100]
    searched = forms.trigger_view(NAMES[:101], "C1", None)["blocks"][0]["element"]
    assert searched["type"] == "external_select" and "options" not in searched


def test_names_that_begin_with_what_was_typed_come_first() -> None:
    names = ["api-web", "web", "web-admin", "webhooks", "xweb"]
    assert [o["value"] for o in forms.pipeline_options(names, " WEB ")] == [
        "web",
        "web-admin",
        "webhooks",
        "api-web",
        "xweb",
    ]
