"""The include file the nginx router owns: what it writes, and how it reads the weights back
(nginx open source has no API for them, so the accepted file is the truth)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.routing import RouterDef
from core.runtime.nginx_router import parse_upstream, render_upstream
from core.runtime.routers import RouterError, router_for


def nginx_router(include: Path, **options: object) -> RouterDef:
    return RouterDef.model_validate(
        {
            "nginx": {
                "include": str(include),
                "upstream": "web",
                "test": ["true"],
                "reload": ["true"],
                **options,
            },
            "stable": ["10.0.0.1:80", "10.0.0.2:80"],
            "canary": ["unix:/run/canary.sock"],
        }
    )


def test_the_block_names_every_server_and_down_for_no_share(tmp_path: Path) -> None:
    text = render_upstream("web", nginx_router(tmp_path / "web.conf"), {"stable": 100, "canary": 0})
    assert text.splitlines()[2:] == [
        "upstream web {",
        "    server 10.0.0.1:80 weight=1;",
        "    server 10.0.0.2:80 weight=1;",
        "    server unix:/run/canary.sock down;",
        "}",
    ]
    assert parse_upstream(text, "web") == {"10.0.0.1:80": 1, "10.0.0.2:80": 1, "unix:/run/canary.sock": 0}


def test_a_hand_written_block_reads_with_nginxs_defaults() -> None:
    text = (
        "upstream other { server a:1; }\n"
        "upstream web {\n  server a:1;  # weight 1\n  server b:1 weight=4 max_fails=0;\n}\n"
    )
    assert parse_upstream(text, "web") == {"a:1": 1, "b:1": 4}
    with pytest.raises(ValueError, match="no complete upstream api block"):
        parse_upstream(text, "api")


async def test_weights_are_read_back_from_the_file(tmp_path: Path) -> None:
    router = router_for("web", nginx_router(tmp_path / "web.conf"))
    assert await router.apply({"stable": 40, "canary": 60}) == {"stable": 40, "canary": 60}
    assert "server unix:/run/canary.sock weight=3;"  # 1 + 1 : 3 in (tmp_path / "web.conf").read_text()
    assert await router_for("web", nginx_router(tmp_path / "web.conf")).read() == {"stable": 40, "canary": 60}


async def test_a_file_not_written_yet_or_not_ours_cannot_be_read(tmp_path: Path) -> None:
    include = tmp_path / "web.conf"
    router = router_for("web", nginx_router(include))
    with pytest.raises(RouterError, match=r"cannot read .*web\.conf \(has Shipyard set weights yet\?\)"):
        await router.read()
    include.write_text("upstream web {\n  server 10.0.0.9:80;\n}\n")
    with pytest.raises(RouterError, match=r"names servers 10\.0\.0\.9:80, not the router's pools'"):
        await router.read()
    include.write_text("upstream api {\n  server 10.0.0.9:80;\n}\n")
    with pytest.raises(RouterError, match="no complete upstream web block"):
        await router.read()


async def test_a_folder_that_is_not_there_is_named(tmp_path: Path) -> None:
    router = router_for("web", nginx_router(tmp_path / "missing" / "web.conf"))
    with pytest.raises(RouterError, match=r"cannot write .*missing/web\.conf: No such file or directory"):
        await router.apply({"stable": 50, "canary": 50})
