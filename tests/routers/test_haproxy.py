"""The haproxy router against a real haproxy: weights over the admin socket move the traffic,
switching it under load fails no request, and haproxy's refusals come back in its own words."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from core.routing import RouterDef
from core.runtime.routers import RouterError, router_for
from tests.routing import Haproxy, Load, Versions, send


@pytest.mark.parametrize("weight", [0, 10, 25, 50, 75, 100])
async def test_the_canary_gets_its_weight_of_the_traffic(haproxy: Haproxy, weight: int) -> None:
    router = router_for("web", haproxy.router())
    applied = await router.apply({"stable": 100 - weight, "canary": weight})

    tally = await send(haproxy.port, 2000)
    assert tally.failures == []
    assert abs(tally.share("canary") - weight) <= 3, tally.versions
    # read back from haproxy itself, by a router that never set anything
    fresh = router_for("web", haproxy.router())
    assert applied == await fresh.read() == {"stable": 100 - weight, "canary": weight}


async def test_switching_all_traffic_under_load_fails_no_request(haproxy: Haproxy) -> None:
    router = router_for("web", haproxy.router())
    async with Load(haproxy.port) as load:
        for weight in (100, 0, 100, 0):
            await router.apply({"stable": 100 - weight, "canary": weight})
            await load.until(50)
            everyone = "canary" if weight else "stable"
            assert (await send(haproxy.port, 50)).versions == {everyone: 50}
    assert load.tally.failures == []
    assert load.tally.versions["canary"] > 100 and load.tally.versions["stable"] > 100


async def test_an_unreachable_socket_is_named(haproxy: Haproxy, tmp_path: Path) -> None:
    nowhere = tmp_path / "nowhere.sock"
    router = router_for("web", haproxy.router(socket=str(nowhere)))
    with pytest.raises(RouterError) as refused:
        await router.apply({"stable": 50, "canary": 50})
    assert refused.value.message == f"cannot connect to haproxy at {nowhere}: No such file or directory"
    with pytest.raises(RouterError, match="cannot connect to haproxy at"):
        await router.read()


async def test_a_refused_tcp_socket_is_named(haproxy: Haproxy) -> None:
    from tests.e2e.server import free_port

    address = f"tcp://127.0.0.1:{free_port()}"
    router = router_for("web", haproxy.router(socket=address))
    with pytest.raises(RouterError, match=f"cannot connect to haproxy at {address}: Connect call failed"):
        await router.read()


async def test_an_unknown_server_is_refused_in_haproxys_words(haproxy: Haproxy) -> None:
    router = router_for("web", haproxy.router({"stable": ["stable"], "canary": ["canary-2"]}))
    with pytest.raises(RouterError) as refused:
        await router.apply({"stable": 90, "canary": 10})
    assert "server canary-2 of backend web" in refused.value.message
    assert "No such server." in refused.value.message
    with pytest.raises(RouterError, match=r"No such server\."):
        await router.read()
    # stable's servers were raised first; nothing was switched off
    assert await router_for("web", haproxy.router()).read() == {"stable": 100, "canary": 0}


async def test_an_unknown_backend_is_refused_in_haproxys_words(haproxy: Haproxy) -> None:
    router = router_for("web", haproxy.router(backend="api"))
    with pytest.raises(RouterError, match=r"No such backend\."):
        await router.apply({"stable": 90, "canary": 10})


async def test_a_socket_that_never_answers_is_given_up_at_the_timeout(tmp_path: Path) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()  # reads the command, answers nothing, keeps it open till the router leaves
        finally:
            writer.close()

    path = tmp_path / "silent.sock"
    server = await asyncio.start_unix_server(silent, path)
    definition = RouterDef.model_validate(
        {"haproxy": {"socket": str(path), "backend": "web"}, "stable": ["a"], "canary": ["b"], "timeout": 1}
    )
    try:
        with pytest.raises(RouterError) as gave_up:
            await router_for("web", definition).read()
    finally:
        server.close()
    assert gave_up.value.message == f"haproxy at {path} did not answer within 1s"


async def test_a_large_pool_beside_a_small_one_gets_its_weight_within_haproxys_limit(
    tmp_path: Path, versions: Versions
) -> None:
    # five stable servers and one canary: 87 % on the canary is a canary weight above haproxy's
    # 256 in exact terms; the weights set in its stead still read back as 87 %
    with Haproxy(tmp_path / "haproxy", versions, stable_servers=5) as haproxy:
        pools = {"stable": haproxy.stable_servers, "canary": ["canary"]}
        router = router_for("web", haproxy.router(pools))
        for weight in (83, 89, 87):
            asked = {"stable": 100 - weight, "canary": weight}
            assert await router.apply(asked) == asked
        tally = await send(haproxy.port, 2000)
        assert tally.failures == []
        assert abs(tally.share("canary") - 87) <= 3, tally.versions


async def test_a_switch_refused_halfway_puts_back_the_servers_it_had_set(haproxy: Haproxy) -> None:
    """A blue/green switch raises the new pool first, then lowers the old one; haproxy refuses a
    server of the old pool. Had the servers set before the refusal stayed set, all traffic would
    be on the canary while the rollout says it stays where it was."""
    pools = {"stable": ["stable", "ghost"], "canary": ["canary"]}
    router = router_for("web", haproxy.router(pools))
    with pytest.raises(RouterError) as refused:
        await router.apply({"stable": 0, "canary": 100})
    assert (
        "server ghost of backend web" in refused.value.message and "No such server." in refused.value.message
    )
    assert "putting" not in refused.value.message  # (put back without trouble)
    assert await router_for("web", haproxy.router()).read() == {"stable": 100, "canary": 0}
    tally = await send(haproxy.port, 300)
    assert tally.failures == [] and tally.versions == {"stable": 300}, tally
