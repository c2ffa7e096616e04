"""Routers at work: setting the weights a ``RouterDef`` (``core/routing.py``) describes, and
reading back the weights really applied.

* ``nginx``: an upstream block in an include file, tested and reloaded (``nginx_router.py``);
  read back from the file nginx accepted (nginx open source has no API for weights).
* ``haproxy``: server weights over the Runtime API (``haproxy_router.py``); read back with
  ``get weight``.
* ``command``: an argv given ``SHIPYARD_ROUTER_WEIGHTS`` (``command_router.py``); read back from
  its last output line.

Every failure is a ``RouterError`` whose ``message`` is in the router's own words. Weights that
are not one 0-100 value per pool summing to 100 raise ``core.routing.InvalidWeights`` before
anything is touched.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from core.routing import RouterDef
from core.runtime.command_router import CommandRouter
from core.runtime.haproxy_router import HaproxyBackend
from core.runtime.nginx_router import NginxUpstream
from core.runtime.router_process import RouterError

__all__ = ["Router", "RouterError", "router_for"]


class Router(Protocol):
    async def apply(self, weights: Mapping[str, int]) -> dict[str, int]:
        """Set ``weights`` (pool -> percent), then return what the router really applies."""
        ...

    async def read(self) -> dict[str, int]:
        """The weights (pool -> percent) the router applies now."""
        ...


def router_for(name: str, definition: RouterDef, *, workdir: Path | None = None) -> Router:
    """The router ``definition`` describes; ``workdir`` is where a command router runs."""
    if definition.nginx is not None:
        return NginxUpstream(name, definition)
    if definition.haproxy is not None:
        return HaproxyBackend(name, definition)
    return CommandRouter(name, definition, workdir)
