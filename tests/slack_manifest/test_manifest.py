"""The Slack app manifest: ``bot/slack/manifest.py``, ``manifest.yml`` and ``shipyard manifest``.

Manifests are validated against Slack's own JSON Schema for v1 manifests, kept next to this file:
``slack-manifest.schema.json`` is a verbatim copy of ``schemas/manifest.schema.1.0.0.json`` from
https://github.com/slackapi/manifest-schema (MIT; the root ``manifest.schema.json`` there ``$ref``s it
at tag v0.5.0), at commit c50cfa8508ff1017344550a5e5fb29a1416e5b98 (sha256 below). It is
self-contained (only local ``#/definitions`` refs), so the tests run offline.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from bot.slack import manifest
from bot.slack.manifest import (
    BOT_EVENTS,
    COMMAND,
    COMMAND_DESCRIPTION,
    LIBRARY_METHODS,
    METHOD_SCOPES,
    OTHER_SCOPES,
    SCOPES,
    USAGE_HINT,
    build,
    render,
)

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SCHEMA_PATH = HERE / "slack-manifest.schema.json"
SCHEMA_SHA256 = "f2adf9f9800230e2fe44bab0762796492871edaab817e9160fdcdf0eb4642e58"
MANIFEST_YML = ROOT / "manifest.yml"
EXAMPLE_BASE = "https://shipyard.example.com"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def errors(validator: jsonschema.Draft7Validator, data: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(data)
    ]


def urls(data: Any) -> list[str]:
    """Every value under a key ending in ``url``, anywhere in the manifest."""
    found: list[str] = []
    if isinstance(data, dict):
        for key, value in data.items():
            if key.endswith("url") and isinstance(value, str):
                found.append(value)
            found.extend(urls(value))
    elif isinstance(data, list):
        for item in data:
            found.extend(urls(item))
    return found


def split_header(text: str) -> tuple[list[str], str]:
    lines = text.splitlines(keepends=True)
    n = 0
    while n < len(lines) and lines[n].startswith("#"):
        n += 1
    return lines[:n], "".join(lines[n:])


# -- the schema copy -------------------------------------------------------------------------


def test_the_schema_is_the_verbatim_copy_of_slacks() -> None:
    assert hashlib.sha256(SCHEMA_PATH.read_bytes()).hexdigest() == SCHEMA_SHA256


# -- manifest.yml ----------------------------------------------------------------------------


def test_manifest_yml_is_what_render_produces() -> None:
    header, body = split_header(MANIFEST_YML.read_text(encoding="utf-8"))
    assert header, "manifest.yml lost its comment header"
    assert body == render(EXAMPLE_BASE), (
        "manifest.yml is out of date: keep the header and replace the rest with the output of "
        f"`shipyard manifest --url {EXAMPLE_BASE}`"
    )


def test_manifest_yml_header_says_how_to_use_it() -> None:
    header = "".join(split_header(MANIFEST_YML.read_text(encoding="utf-8"))[0])
    assert "shipyard manifest --url https://" in header
    assert "From an app manifest" in header
    assert "shipyard.example.com" in header  # the placeholder host is named as such


def test_manifest_yml_is_valid(validator: jsonschema.Draft7Validator) -> None:
    data = yaml.safe_load(MANIFEST_YML.read_text(encoding="utf-8"))
    assert errors(validator, data) == []
    assert set(urls(data)) == {f"{EXAMPLE_BASE}/slack/events"}


# -- render() --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "events_url"),
    [
        ({"base_url": "https://x.example"}, "https://x.example/slack/events"),
        ({"base_url": "https://x.example/"}, "https://x.example/slack/events"),
        ({"base_url": "https://x.example:8443/shipyard/"}, "https://x.example:8443/shipyard/slack/events"),
        ({"base_url": "http://127.0.0.1:3000"}, "http://127.0.0.1:3000/slack/events"),
        ({"base_url": "http://localhost:3000"}, "http://localhost:3000/slack/events"),
        ({"base_url": "https://x.example", "socket_mode": True}, "https://x.example/slack/events"),
        ({"socket_mode": True}, None),
    ],
    ids=["https", "trailing-slash", "port-and-path", "http-127", "http-localhost", "socket+url", "socket"],
)
def test_render_is_a_valid_manifest_with_everything_shipyard_needs(
    validator: jsonschema.Draft7Validator, kwargs: dict[str, Any], events_url: str | None
) -> None:
    text = render(**kwargs)
    data = yaml.safe_load(text)
    assert errors(validator, data) == []
    assert data == build(**kwargs)

    features, settings = data["features"], data["settings"]
    assert features["slash_commands"] == [
        {
            "command": COMMAND,
            **({"url": events_url} if events_url else {}),
            "description": COMMAND_DESCRIPTION,
            "usage_hint": USAGE_HINT,
            "should_escape": False,
        }
    ]
    assert COMMAND == "/deploy"
    assert data["oauth_config"]["scopes"] == {"bot": list(SCOPES)}
    assert settings["event_subscriptions"]["bot_events"] == list(BOT_EVENTS) == ["app_home_opened"]
    assert settings["interactivity"]["is_enabled"] is True
    assert features["app_home"]["home_tab_enabled"] is True
    assert features["app_home"]["messages_tab_enabled"] is False
    assert features["bot_user"] == {"display_name": "shipyard", "always_online": True}
    assert settings["socket_mode_enabled"] is bool(kwargs.get("socket_mode"))
    assert settings["org_deploy_enabled"] is False
    assert settings["token_rotation_enabled"] is False
    if events_url:
        assert settings["event_subscriptions"]["request_url"] == events_url
        assert settings["interactivity"]["request_url"] == events_url
        assert settings["interactivity"]["message_menu_options_url"] == events_url
        assert set(urls(data)) == {events_url}
    else:
        assert urls(data) == []


def test_render_names_the_app() -> None:
    data = yaml.safe_load(render("https://x.example", name="Shipyard (staging)"))
    assert data["display_information"]["name"] == "Shipyard (staging)"
    with pytest.raises(ValueError, match="1 to 35 characters"):
        render("https://x.example", name="x" * 36)


@pytest.mark.parametrize(
    ("base_url", "reason"),
    [
        ("ftp://x", "must start with https://"),
        ("shipyard.example.com", "must start with https://"),
        ("http://shipyard.example.com", "must use https"),
        ("http://127.0.0.2", "must use https"),
        ("https://", "has no host"),
        ("https://x.example?a=1", "must not have a query"),
        ("https://x.example#top", "must not have a query"),
        ("https://user:pw@x.example", "credentials"),
        ("https://x.example:99999", "not a valid URL"),
        ("https://x.example/slack/events", "must not end with /slack/events"),
        ("https://x.example/" + "a" * 3000, "too long"),
    ],
)
def test_render_refuses_a_base_url_slack_cannot_or_should_not_post_to(base_url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as caught:
        render(base_url)
    assert repr(base_url) in str(caught.value)


def test_render_needs_a_base_url_unless_socket_mode() -> None:
    with pytest.raises(ValueError, match="unless the app uses socket mode"):
        render()


# -- scopes ----------------------------------------------------------------------------------


def test_scopes_are_exactly_what_the_methods_and_the_command_need() -> None:
    needed = {scope for scope in METHOD_SCOPES.values() if scope} | {"commands"}
    assert list(SCOPES) == sorted(needed)
    assert SCOPES == ("chat:write", "commands", "usergroups:read")
    assert METHOD_SCOPES["chat.postMessage"] == "chat:write"
    assert METHOD_SCOPES["views.publish"] is None
    assert OTHER_SCOPES == ("commands",)


def _web_api_methods_called_in(path: Path) -> set[str]:
    """The Web API methods a module calls: ``client.chat_postMessage(…)``, and any string naming one
    (``client.api_call("chat.postMessage", …)``, a hand-made HTTP call to ``…/chat.postMessage``)."""
    from slack_sdk import WebClient
    from slack_sdk.web.base_client import BaseClient

    sdk_methods = set(dir(WebClient)) - set(dir(BaseClient))
    api_methods = {name.replace("_", ".") for name in sdk_methods}
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in sdk_methods
        ):
            found.add(node.func.attr.replace("_", "."))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            last = node.value.rstrip("/").rsplit("/", 1)[-1]
            if last in api_methods:
                found.add(last)
    return found


def _called_by_shipyard() -> dict[str, set[str]]:
    """Web API method → the modules under ``bot/`` that call it. ``bot/slack/manifest.py`` only
    names the methods (it declares them), so it is not read as calling them."""
    declaring = Path(manifest.__file__).resolve()
    called: dict[str, set[str]] = {}
    for path in sorted((ROOT / "bot").rglob("*.py")):
        if path.resolve() != declaring:
            for method in _web_api_methods_called_in(path):
                called.setdefault(method, set()).add(str(path.relative_to(ROOT)))
    return called


def test_the_scan_finds_calls_of_both_shapes(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text('await client.users_info(user=u)\nawait client.api_call("conversations.info")\n')
    assert _web_api_methods_called_in(module) == {"users.info", "conversations.info"}


def test_every_web_api_method_the_code_calls_has_its_scope_declared() -> None:
    # METHOD_SCOPES is the single source of truth: a new Slack call must be added there (and so
    # its scope to the manifest), or the installed app gets `missing_scope` at run time
    undeclared = {
        f"{where}: {method}"
        for method, modules in _called_by_shipyard().items()
        for where in modules
        if method not in METHOD_SCOPES
    }
    assert not undeclared, f"add these to METHOD_SCOPES in {manifest.__name__}: {sorted(undeclared)}"


def test_every_declared_method_is_called_by_the_code() -> None:
    # the other direction: a method nobody calls any more must go, with the scope it asked for
    unused = set(METHOD_SCOPES) - set(_called_by_shipyard())
    assert not unused, f"nothing under bot/ calls {sorted(unused)}: remove them from METHOD_SCOPES"


@pytest.mark.parametrize("method", sorted(LIBRARY_METHODS))
def test_the_methods_the_libraries_call_are_theirs_and_need_no_bot_scope(method: str) -> None:
    spec = importlib.util.find_spec(LIBRARY_METHODS[method])
    assert spec is not None and spec.origin is not None
    assert method in _web_api_methods_called_in(Path(spec.origin))
    assert method not in METHOD_SCOPES  # (so they cannot bring a scope in)


def test_the_manifest_asks_for_exactly_the_scopes_the_code_needs() -> None:
    # derived from the code, not from METHOD_SCOPES' keys: every scope asked for is needed by a
    # Web API method some module under bot/ calls (or by the slash command), and every such
    # method's scope is asked for
    data = yaml.safe_load(MANIFEST_YML.read_text(encoding="utf-8"))
    asked = set(data["oauth_config"]["scopes"]["bot"])
    assert [c["command"] for c in data["features"]["slash_commands"]] == [COMMAND]
    needed = {"commands"} | {
        scope for method in _called_by_shipyard() if (scope := METHOD_SCOPES.get(method)) is not None
    }
    assert asked == needed
    assert asked == set(build("https://x.example")["oauth_config"]["scopes"]["bot"])
    assert not asked & {"users:read", "channels:read"}  # users.info / conversations.info: never called


# -- the schema catches mistakes (so the tests above can fail) -------------------------------


@pytest.mark.parametrize(
    ("path", "change", "message"),
    [
        (
            ("features",),
            lambda d: d.update(slash_command=d.pop("slash_commands")),
            "'slash_command' was unexpected",
        ),
        (
            ("settings",),
            lambda d: d.update(interactivty=d.pop("interactivity")),
            "'interactivty' was unexpected",
        ),
        (
            ("features", "slash_commands", 0),
            lambda d: d.pop("description"),
            "'description' is a required property",
        ),
        (("features", "slash_commands", 0), lambda d: d.update(command="deploy"), "does not match"),
        (("settings", "interactivity"), lambda d: d.pop("is_enabled"), "'is_enabled' is a required property"),
        (("features", "bot_user"), lambda d: d.pop("display_name"), "'display_name' is a required property"),
    ],
    ids=[
        "typo-in-features",
        "typo-in-settings",
        "command-without-description",
        "command-without-slash",
        "interactivity-without-is_enabled",
        "bot-user-without-display_name",
    ],
)
def test_the_schema_rejects_a_broken_manifest(
    validator: jsonschema.Draft7Validator, path: tuple[str | int, ...], change: Any, message: str
) -> None:
    data = copy.deepcopy(build("https://x.example"))
    target: Any = data
    for key in path:
        target = target[key]
    change(target)
    problems = errors(validator, data)
    assert any(message in p for p in problems), problems


# -- shipyard manifest -----------------------------------------------------------------------


def shipyard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", "manifest", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        encoding="utf-8",
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


def test_the_command_prints_a_valid_manifest_for_the_given_url(validator: jsonschema.Draft7Validator) -> None:
    done = shipyard("--url", "https://x.example")
    assert done.returncode == 0, done.stderr
    data = yaml.safe_load(done.stdout)
    assert errors(validator, data) == []
    assert done.stdout == render("https://x.example")
    assert data["features"]["slash_commands"][0]["url"] == "https://x.example/slack/events"
    assert set(urls(data)) == {"https://x.example/slack/events"}


def test_the_command_prints_a_socket_mode_manifest(validator: jsonschema.Draft7Validator) -> None:
    done = shipyard("--socket-mode")
    assert done.returncode == 0, done.stderr
    data = yaml.safe_load(done.stdout)
    assert errors(validator, data) == []
    assert data["settings"]["socket_mode_enabled"] is True
    assert urls(data) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--url", "ftp://x"), "shipyard: base URL 'ftp://x' must start with https://"),
        (("--url", "http://shipyard.example.com"), "must use https"),
        ((), "shipyard: give --url https://your-host, or --socket-mode"),
    ],
)
def test_the_command_refuses_a_bad_url_in_one_line(args: tuple[str, ...], message: str) -> None:
    done = shipyard(*args)
    assert done.returncode == 2
    assert done.stdout == ""
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
