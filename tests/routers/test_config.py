"""Router configuration: what is accepted, what is refused (naming the field), and the weight
arithmetic every provider shares."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bot.config import ConfigError, load_settings
from core.environments import EnvironmentPolicy, Environments
from core.routing import (
    InvalidWeights,
    RouterDef,
    check_weights,
    parse_weights,
    pool_weights,
    server_weights,
    weights_for,
)

NGINX = {"include": "/etc/nginx/shipyard/web.conf", "upstream": "web"}
HAPROXY = {"socket": "/run/haproxy/admin.sock", "backend": "web"}
POOLS = {"stable": ["10.0.0.1:80"], "canary": ["10.0.0.2:80"]}


def test_the_three_providers_and_the_shorthand() -> None:
    policy = EnvironmentPolicy.model_validate(
        {
            "routers": {
                "web": {"nginx": {**NGINX, "server_options": "max_fails=0", "keepalive": 16}, "pools": POOLS},
                "api": {"haproxy": HAPROXY, "stable": ["api1", "api2"], "canary": ["api3"]},
                "edge": {"command": ["./switch.sh"], "blue": ["b"], "green": ["g"], "timeout": "20s"},
            }
        }
    )
    web, api, edge = policy.routers["web"], policy.routers["api"], policy.routers["edge"]
    assert web.nginx is not None and (web.nginx.test, web.nginx.reload) == (
        ["nginx", "-t"],
        ["nginx", "-s", "reload"],
    )
    assert (web.kind, web.timeout, web.candidate) == ("nginx", 10.0, "canary")
    assert (api.kind, api.pools) == ("haproxy", {"stable": ["api1", "api2"], "canary": ["api3"]})
    assert (edge.kind, edge.timeout, edge.pool_names, edge.candidate) == (
        "command",
        20.0,
        ("blue", "green"),
        "green",
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"pools": POOLS}, "a router is exactly one of nginx, haproxy or command"),
        (
            {"nginx": NGINX, "command": ["x"], "pools": POOLS},
            "a router is exactly one of nginx, haproxy or command",
        ),
        (
            {"nginx": NGINX, "pools": {**POOLS, "extra": ["x:1"]}},
            "pools\n  Value error, a router has exactly two pools",
        ),
        ({"nginx": NGINX, "pools": {"stable": ["a:1"]}}, "got stable"),
        (
            {"nginx": NGINX, "pools": {"stable": [], "canary": ["b:1"]}},
            "pools\n  Value error, pool stable is empty",
        ),
        (
            {"nginx": NGINX, "pools": {"stable": ["a:1"], "canary": ["a:1"]}},
            "a:1: a server is in one pool only",
        ),
        ({"nginx": NGINX, "pools": {"Stable": ["a:1"], "canary": ["b:1"]}}, "'Stable' is not a pool name"),
        ({"nginx": NGINX, "pools": {"stable": ["a:1; b"], "canary": ["b:1"]}}, "'a:1; b' is not a server"),
        ({"nginx": NGINX}, "pools\n  Field required"),
        (
            {"nginx": NGINX, "pools": POOLS, "stable": ["a:1"]},
            "give the pools under pools or at the top (stable)",
        ),
        (
            {"nginx": {**NGINX, "include": "shipyard/web.conf"}, "pools": POOLS},
            "nginx.include\n  Value error, 'shipyard",
        ),
        (
            {"nginx": {**NGINX, "upstream": "web app"}, "pools": POOLS},
            "nginx.upstream\n  String should match",
        ),
        ({"nginx": {**NGINX, "server_options": "max_fails=0;"}, "pools": POOLS}, "nginx.server_options\n"),
        (
            {"nginx": {**NGINX, "server_options": "weight=5"}, "pools": POOLS},
            "weight, down and backup are Shipyard's",
        ),
        ({"nginx": {**NGINX, "keepalive": 0}, "pools": POOLS}, "nginx.keepalive\n  Input should be greater"),
        ({"nginx": {**NGINX, "test": []}, "pools": POOLS}, "nginx.test\n  List should have at least 1 item"),
        (
            {"nginx": {**NGINX, "reload_command": ["x"]}, "pools": POOLS},
            "nginx.reload_command\n  Extra inputs",
        ),
        (
            {"haproxy": {**HAPROXY, "socket": "admin.sock"}, "pools": POOLS},
            "haproxy.socket\n  Value error, 'admin.sock'",
        ),
        ({"haproxy": {**HAPROXY, "socket": "tcp://lb:99999"}, "pools": POOLS}, "use tcp://host:port"),
        ({"haproxy": {**HAPROXY, "socket": "tcp://lb"}, "pools": POOLS}, "use tcp://host:port"),
        ({"haproxy": {"socket": "/x.sock"}, "pools": POOLS}, "haproxy.backend\n  Field required"),
        (
            {"haproxy": HAPROXY, "pools": {"stable": ["a/b"], "canary": ["c"]}},
            "'a/b' is not a haproxy server name",
        ),
        ({"command": [], "pools": POOLS}, "command\n  List should have at least 1 item"),
        (
            {"command": ["x"], "pools": POOLS, "timeout": "soon"},
            "timeout\n  Value error, invalid duration 'soon'",
        ),
        ({"command": ["x"], "pools": POOLS, "weights": {}}, "weights\n  Extra inputs are not permitted"),
    ],
)
def test_a_bad_router_is_refused_naming_the_field(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as raised:
        RouterDef.model_validate(spec)
    assert message in str(raised.value)


def test_a_bad_router_name_is_refused() -> None:
    with pytest.raises(ValidationError, match="'Web' is not a router name"):
        EnvironmentPolicy.model_validate({"routers": {"Web": {"command": ["x"], "pools": POOLS}}})


def test_a_bad_router_in_the_config_file_stops_the_start_naming_where_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "shipyard.yml"
    config.write_text(
        "environments:\n"
        "  production:\n"
        "    routers:\n"
        "      web:\n"
        "        nginx: {include: web.conf, upstream: web}\n"
        "        pools: {stable: [a:1], canary: [b:1], extra: [c:1]}\n"
    )
    monkeypatch.setenv("SHIPYARD_CONFIG", str(config))
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert "SHIPYARD_ENVIRONMENTS.production.routers.web.nginx.include: 'web.conf': give" in str(
        refused.value
    )
    assert "SHIPYARD_ENVIRONMENTS.production.routers.web.pools: a router has exactly two pools" in str(
        refused.value
    )


def test_a_good_router_in_the_config_file_is_on_its_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "shipyard.yml"
    config.write_text(
        "environments:\n  production:\n    routers:\n"
        "      web: {haproxy: {socket: 'tcp://127.0.0.1:9999', backend: web}, blue: [b1], green: [g1]}\n"
    )
    monkeypatch.setenv("SHIPYARD_CONFIG", str(config))
    router = load_settings().environment("production").routers["web"]
    assert router.pools == {"blue": ["b1"], "green": ["g1"]}


# --- weights --------------------------------------------------------------------------------------

ROUTER = RouterDef.model_validate({"command": ["x"], "pools": POOLS})


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"stable": -20, "canary": 120}, "weight -20 for stable: weights are 0-100"),
        ({"stable": 0, "canary": 120}, "weight 120 for canary: weights are 0-100"),
        ({"stable": 90, "canary": 20}, "weights add up to 110, not 100 (stable=90, canary=20)"),
        ({"stable": 100}, "no weight for canary: give one for each of stable, canary"),
        ({"stable": 50, "green": 50}, "no pool 'green' (pools: stable, canary)"),
        ({"stable": 50.0, "canary": 50}, "weight 50.0 for stable: a weight is a whole number 0-100"),
    ],
)
def test_bad_weights_say_what_is_wrong(weights: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidWeights) as refused:
        check_weights(ROUTER, weights)
    assert str(refused.value) == message


def test_weights_for_the_candidate_or_a_named_pool() -> None:
    assert weights_for(ROUTER, 10) == {"stable": 90, "canary": 10}
    assert weights_for(ROUTER, 100, "stable") == {"stable": 100, "canary": 0}
    with pytest.raises(InvalidWeights, match="weight 120 for canary: weights are 0-100"):
        weights_for(ROUTER, 120)


@pytest.mark.parametrize(
    ("sizes", "weights", "limit", "servers"),
    [
        ((1, 1), (90, 10), None, ((9,), (1,))),
        ((1, 1), (100, 0), None, ((1,), (0,))),
        ((1, 1), (0, 0), None, ((0,), (0,))),
        ((2, 1), (75, 25), None, ((3, 3), (2,))),
        ((3, 2), (50, 50), None, ((2, 2, 2), (3, 3))),
        ((1, 3), (99, 1), 256, ((256,), (1, 1, 1))),  # rounded, but canary is not switched off
        ((4, 1), (13, 87), 256, ((9, 9, 9, 9), (252,))),  # rounded to what still reads back as 13/87
    ],
)
def test_a_pools_weight_is_split_among_its_servers(
    sizes: tuple[int, int], weights: tuple[int, int], limit: int | None, servers: tuple[tuple[int, ...], ...]
) -> None:
    pools = {"stable": [f"s{i}" for i in range(sizes[0])], "canary": [f"c{i}" for i in range(sizes[1])]}
    got = server_weights(pools, dict(zip(pools, weights, strict=True)), limit)
    assert got == {
        **dict(zip(pools["stable"], servers[0], strict=True)),
        **dict(zip(pools["canary"], servers[1], strict=True)),
    }
    if sum(weights):
        assert pool_weights(pools, got) == dict(zip(pools, weights, strict=True))


def test_read_back_rounds_to_whole_percents_summing_to_100() -> None:
    pools = {"a": ["a1"], "b": ["b1"], "c": ["c1"]}
    assert pool_weights(pools, {"a1": 1, "b1": 1, "c1": 1}) == {"a": 34, "b": 33, "c": 33}
    assert pool_weights({"a": ["a1"], "b": ["b1"]}, {"a1": 0, "b1": 0}) == {"a": 0, "b": 0}


@pytest.mark.parametrize(
    ("text", "weights"),
    [
        ("stable=90,canary=10", {"stable": 90, "canary": 10}),
        (" blue=0, green=100 ", {"blue": 0, "green": 100}),
        ("switched", None),
        ("stable=ninety", None),
        ("", None),
    ],
)
def test_weights_as_text(text: str, weights: dict[str, int] | None) -> None:
    assert parse_weights(text) == weights


@pytest.mark.parametrize(
    "router",
    [
        {"nginx": {"include": "/etc/nginx/shipyard/web.conf", "upstream": "web"}, "pools": POOLS},
        {"haproxy": HAPROXY, "pools": POOLS},
    ],
)
def test_two_environments_cannot_drive_one_router(router: dict[str, Any]) -> None:
    """staging and production each lease and drive their own router: were both the same nginx
    include (or haproxy backend), two rollouts at once would overwrite each other's weights."""
    with pytest.raises(ValidationError) as refused:
        Environments.model_validate(
            {"staging": {"routers": {"web": router}}, "production": {"routers": {"site": router}}}
        )
    assert "staging.routers.web and production.routers.site both drive" in str(refused.value)
    other = {**router, "pools": {"blue": ["x"], "green": ["y"]}}
    with pytest.raises(ValidationError) as again:
        Environments.model_validate({"production": {"routers": {"a": router, "b": other}}})
    assert "production.routers.a and production.routers.b both drive" in str(again.value)
    alone = Environments.model_validate({"staging": {"routers": {"web": router}}})
    assert "web" in alone.policy("staging").routers
