"""The nginx router against a real nginx: the traffic goes where the weights say, switching it
under load fails no request, and a change nginx refuses leaves everything as it was."""

from __future__ import annotations

import sys

import pytest

from core.runtime.routers import RouterError, router_for
from tests.checks.services import WebService
from tests.routing import Load, Nginx, send


@pytest.mark.parametrize("weight", [0, 10, 25, 50, 75, 100])
async def test_the_canary_gets_its_weight_of_the_traffic(nginx: Nginx, weight: int) -> None:
    router = router_for("web", nginx.router())
    before = nginx.workers()
    applied = await router.apply({"stable": 100 - weight, "canary": weight})
    await nginx.settled(before)

    tally = await send(nginx.port, 2000)
    assert tally.failures == []
    assert abs(tally.share("canary") - weight) <= 3, tally.versions
    assert applied == await router.read() == {"stable": 100 - weight, "canary": weight}


async def test_a_pool_of_several_servers_gets_its_weight_with_the_options_given(nginx: Nginx) -> None:
    with WebService(version="stable") as second:
        pools = {
            "stable": [nginx.versions.stable.target, second.target],
            "canary": [nginx.versions.canary.target],
        }
        router = router_for(
            "web", nginx.router(pools, server_options="max_fails=0 fail_timeout=5s", keepalive=4)
        )
        before = nginx.workers()
        await router.apply({"stable": 75, "canary": 25})
        await nginx.settled(before)
        tally = await send(nginx.port, 2000)
    assert abs(tally.share("canary") - 25) <= 3, tally.versions
    written = nginx.include.read_text()  # 3 + 3 for the two stable servers, 2 for canary's one
    assert f"server {second.target} weight=3 max_fails=0 fail_timeout=5s;" in written
    assert f"server {nginx.versions.canary.target} weight=2 max_fails=0 fail_timeout=5s;" in written
    assert "keepalive 4;" in written
    assert await router.read() == {"stable": 75, "canary": 25}


async def test_switching_all_traffic_under_load_fails_no_request(nginx: Nginx) -> None:
    router = router_for("web", nginx.router())
    async with Load(nginx.port) as load:
        for weight in (100, 0, 100, 0):
            before = nginx.workers()
            await router.apply({"stable": 100 - weight, "canary": weight})
            await nginx.settled(before)
            await load.until(50)
            everyone = "canary" if weight else "stable"
            assert (await send(nginx.port, 50)).versions == {everyone: 50}
    assert load.tally.failures == []
    assert load.tally.versions["canary"] > 100 and load.tally.versions["stable"] > 100


async def test_a_change_nginx_refuses_leaves_the_file_and_the_traffic_as_they_were(nginx: Nginx) -> None:
    router = router_for("web", nginx.router())
    before = nginx.workers()
    await router.apply({"stable": 75, "canary": 25})
    await nginx.settled(before)
    accepted = nginx.include.read_bytes()
    workers = nginx.workers()

    bad = router_for(
        "web", nginx.router({"stable": [nginx.versions.stable.target], "canary": ["127.0.0.1:99999"]})
    )
    with pytest.raises(RouterError) as refused:
        await bad.apply({"stable": 50, "canary": 50})

    assert 'invalid port in upstream "127.0.0.1:99999"' in refused.value.message  # nginx's own words
    assert "nginx refused the new weights" in refused.value.message
    assert nginx.include.read_bytes() == accepted
    assert nginx.workers() == workers  # not reloaded
    assert list(nginx.include.parent.iterdir()) == [nginx.include]  # no temporary file left
    tally = await send(nginx.port, 2000)
    assert abs(tally.share("canary") - 25) <= 3, tally.versions
    assert await router.read() == {"stable": 75, "canary": 25}


async def test_a_failed_reload_puts_the_previous_file_back(nginx: Nginx) -> None:
    accepted = nginx.include.read_bytes()
    failing = [
        sys.executable,
        "-c",
        "import sys; sys.exit('nginx: [error] invalid PID number \"\" in nginx.pid')",
    ]
    router = router_for("web", nginx.router(reload=failing))
    with pytest.raises(RouterError) as refused:
        await router.apply({"stable": 0, "canary": 100})
    assert "nginx did not reload" in refused.value.message
    assert "invalid PID number" in refused.value.message
    assert nginx.include.read_bytes() == accepted
    assert await router.read() == {"stable": 100, "canary": 0}


async def test_a_slow_test_command_is_killed_at_the_timeout(nginx: Nginx) -> None:
    definition = nginx.router(test=[sys.executable, "-c", "import time; time.sleep(30)"])
    router = router_for("web", definition.model_copy(update={"timeout": 0.5}))
    accepted = nginx.include.read_bytes()
    with pytest.raises(RouterError, match=r"timed out after 0.5s \(killed\)"):
        await router.apply({"stable": 50, "canary": 50})
    assert nginx.include.read_bytes() == accepted
