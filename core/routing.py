"""Routers: what moves traffic between two pools of servers during a canary or blue/green release.

A router is declared on an environment in the service's configuration (``SHIPYARD_CONFIG``) and
splits traffic between exactly two *pools*: ``stable``/``canary`` for a canary release,
``blue``/``green`` for blue/green. Shipyard sets the *weights*, each pool's percentage of the
traffic (0-100, summing to 100), and reads back what the router really applied::

    environments:
      production:
        routers:
          web:                              # nginx: Shipyard writes an upstream block
            nginx: {include: /etc/nginx/shipyard/web.conf, upstream: web, server_options: max_fails=0}
            pools: {stable: [10.0.0.1:8080, 10.0.0.2:8080], canary: [10.0.0.3:8080]}
          api:                              # haproxy: weights over the Runtime API
            haproxy: {socket: /run/haproxy/admin.sock, backend: api}
            stable: [api1, api2]            # shorthand for pools: (haproxy server names)
            canary: [api3]
          edge:                             # anything else: a command gets the weights
            command: [./set-weights.sh]
            pools: {blue: [edge-blue], green: [edge-green]}
            timeout: 20s

A pool's share is split among its servers, so pools of different sizes still get their weight
(``server_weights``); a router reports pool weights back from its servers' (``pool_weights``).
The I/O lives in ``core/runtime/routers.py``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from pydantic import Field, field_validator, model_validator

from core.definition import NAME, Duration, _Strict

#: the pool names the top-level shorthand accepts (``stable: [...]`` beside ``nginx:``)
SHORTHAND_POOLS = ("stable", "canary", "blue", "green")
#: the pool that takes the new version, by the pair's names (else the second pool)
_CANDIDATES = ("canary", "green")
#: haproxy's largest server weight
HAPROXY_MAX_WEIGHT = 256
_NGINX_WORD = re.compile(r"^[^\s;{}'\"#]+$")
_HAPROXY_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")
_TCP_SOCKET = re.compile(r"^tcp://[^\s/:]+:(\d{1,5})$")


class InvalidWeights(ValueError):
    """The weights are not one 0-100 weight per pool, summing to 100."""


class NginxRouter(_Strict):
    """An ``upstream`` block Shipyard owns in a file nginx includes; changes are tested with
    ``test`` and applied with ``reload`` (nginx open source cannot change weights otherwise)."""

    #: the file Shipyard writes, included inside nginx's ``http {}``
    include: str
    #: the upstream block's name (what ``proxy_pass http://<upstream>`` names)
    upstream: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    test: list[str] = Field(default_factory=lambda: ["nginx", "-t"], min_length=1)
    reload: list[str] = Field(default_factory=lambda: ["nginx", "-s", "reload"], min_length=1)
    #: extra parameters for every ``server`` line, e.g. ``max_fails=0 fail_timeout=5s``
    server_options: str = ""
    #: ``keepalive N`` in the upstream: idle connections kept open to the servers
    keepalive: int | None = Field(default=None, ge=1, le=100_000)
    #: nginx reloads asynchronously (new workers start, old ones stop accepting): how long the
    #: router waits after a reload before it reads back, so confirmed weights are the ones new
    #: connections get
    settle: Duration = 0.5

    @field_validator("include")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/") or "\x00" in value or value.endswith("/"):
            raise ValueError(
                f"{value!r}: give the include file's absolute path, e.g. /etc/nginx/shipyard/web.conf"
            )
        return value

    @field_validator("server_options")
    @classmethod
    def _options(cls, value: str) -> str:
        if any(word for word in value.split() if not _NGINX_WORD.match(word)):
            raise ValueError(f"{value!r}: server parameters cannot hold ';', braces, quotes or '#'")
        if re.search(r"(^|\s)(weight=|down(\s|$)|backup(\s|$))", value):
            raise ValueError("weight, down and backup are Shipyard's to set")
        return value.strip()


class HaproxyRouter(_Strict):
    """A backend whose servers' weights are set over haproxy's Runtime API (the admin socket)."""

    #: a unix socket path (``stats socket /run/haproxy/admin.sock level admin``) or tcp://host:port
    socket: str
    backend: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")

    @field_validator("socket")
    @classmethod
    def _socket(cls, value: str) -> str:
        if value.startswith("tcp://"):
            match = _TCP_SOCKET.match(value)
            if match is None or not 0 < int(match.group(1)) < 65536:
                raise ValueError(f"{value!r}: use tcp://host:port")
            return value
        if not value.startswith("/") or value.endswith("/") or "\x00" in value:
            raise ValueError(f"{value!r}: use the admin socket's absolute path or tcp://host:port")
        return value


class RouterDef(_Strict):
    """One router: exactly one of ``nginx``, ``haproxy``, ``command``, and its two pools.

    Pool members are what the provider names servers by: ``host:port`` (or ``unix:/path``) for
    nginx, server names of the backend for haproxy, anything for a command."""

    nginx: NginxRouter | None = None
    haproxy: HaproxyRouter | None = None
    #: an argv given the weights in ``SHIPYARD_ROUTER_WEIGHTS`` (``stable=90,canary=10``)
    command: list[str] | None = Field(default=None, min_length=1)
    pools: dict[str, list[str]]
    #: how long one change (or read) may take, test and reload included
    timeout: Duration = 10.0
    #: how long Shipyard, started again, waits for the router to answer (retrying every second)
    #: before it fails the rollouts it resumes: a router restarted at the same time as Shipyard
    #: (nginx not running yet, haproxy's socket not up) is not a wrong router. An abort's change
    #: is retried as long
    resume_wait: Duration = 60.0

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        """``stable: [...]`` and ``canary: [...]`` beside ``nginx:`` mean ``pools:``."""
        if not isinstance(data, dict):
            return data
        given = [name for name in SHORTHAND_POOLS if name in data]
        if not given:
            return data
        if "pools" in data:
            raise ValueError(f"give the pools under pools or at the top ({', '.join(given)}), not both")
        rest = {k: v for k, v in data.items() if k not in given}
        return {**rest, "pools": {name: data[name] for name in given}}

    @field_validator("pools")
    @classmethod
    def _two_pools(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, members in value.items():
            if not re.fullmatch(NAME, name):
                raise ValueError(f"{name!r} is not a pool name: use lowercase letters, digits and '-'")
            if not members:
                raise ValueError(f"pool {name} is empty: name at least one server")
            for member in members:
                if not _NGINX_WORD.match(member):
                    raise ValueError(
                        f"pool {name}: {member!r} is not a server (no spaces, ';', braces, quotes)"
                    )
        if len(value) != 2:
            got = ", ".join(value) or "none"
            raise ValueError(
                f"a router has exactly two pools (stable and canary, or blue and green), got {got}"
            )
        members = [m for pool in value.values() for m in pool]
        twice = sorted({m for m in members if members.count(m) > 1})
        if twice:
            raise ValueError(f"{', '.join(twice)}: a server is in one pool only, once")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> RouterDef:
        kinds = [k for k in ("nginx", "haproxy", "command") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("a router is exactly one of nginx, haproxy or command")
        if self.haproxy is not None:
            for pool, members in self.pools.items():
                bad = [m for m in members if not _HAPROXY_NAME.match(m)]
                if bad:
                    raise ValueError(f"pools.{pool}: {bad[0]!r} is not a haproxy server name")
        return self

    @property
    def kind(self) -> str:
        return "nginx" if self.nginx else "haproxy" if self.haproxy else "command"

    @property
    def pool_names(self) -> tuple[str, str]:
        first, second = self.pools
        return first, second

    @property
    def candidate(self) -> str:
        """The pool a release shifts traffic to: ``canary`` or ``green`` if so named, else the
        second pool."""
        for name in _CANDIDATES:
            if name in self.pools:
                return name
        return self.pool_names[1]


def weights_for(router: RouterDef, weight: int, pool: str | None = None) -> dict[str, int]:
    """``weight`` percent to ``pool`` (default: the candidate, ``canary``/``green``), the rest to
    the other pool."""
    pool = pool or router.candidate
    if pool not in router.pools:
        raise InvalidWeights(f"no pool {pool!r} (pools: {', '.join(router.pools)})")
    _check_weight(pool, weight)
    return {name: weight if name == pool else 100 - weight for name in router.pools}


def check_weights(router: RouterDef, weights: Mapping[str, object]) -> dict[str, int]:
    """``weights`` as a pool -> percentage mapping, in the router's pool order; raises
    ``InvalidWeights`` saying what is wrong."""
    unknown = [name for name in weights if name not in router.pools]
    if unknown:
        raise InvalidWeights(f"no pool {unknown[0]!r} (pools: {', '.join(router.pools)})")
    missing = [name for name in router.pools if name not in weights]
    if missing:
        raise InvalidWeights(f"no weight for {missing[0]}: give one for each of {', '.join(router.pools)}")
    checked = {name: _check_weight(name, weights[name]) for name in router.pools}
    if sum(checked.values()) != 100:
        shown = ", ".join(f"{k}={v}" for k, v in checked.items())
        raise InvalidWeights(f"weights add up to {sum(checked.values())}, not 100 ({shown})")
    return checked


def _check_weight(pool: str, weight: object) -> int:
    if isinstance(weight, bool) or not isinstance(weight, int):
        raise InvalidWeights(f"weight {weight!r} for {pool}: a weight is a whole number 0-100")
    if not 0 <= weight <= 100:
        raise InvalidWeights(f"weight {weight} for {pool}: weights are 0-100")
    return weight


def format_weights(weights: Mapping[str, int]) -> str:
    """``stable=90,canary=10``: how a command router gets them, and how people read them."""
    return ",".join(f"{pool}={weight}" for pool, weight in weights.items())


def parse_weights(text: str) -> dict[str, int] | None:
    """The inverse of ``format_weights``; None when ``text`` is not in that form."""
    found: dict[str, int] = {}
    for part in text.strip().split(","):
        name, sep, number = part.strip().partition("=")
        if not sep or not re.fullmatch(NAME, name.strip()) or not number.strip().isdigit():
            return None
        found[name.strip()] = int(number)
    return found or None


def server_weights(
    pools: Mapping[str, list[str]], weights: Mapping[str, int], limit: int | None = None
) -> dict[str, int]:
    """Each server's weight so that each pool gets its share whatever its size: a pool's weight
    is split evenly among its servers; 0 means the server takes no traffic. Exact (the smallest
    such whole numbers) unless that needs a weight above ``limit``; then rounded within it, to
    the largest weights whose ``pool_weights`` are ``weights`` again when there are such (the
    router reads them back and must find what it was asked for), else to ``limit``."""
    size = math.lcm(*(len(members) for members in pools.values()))
    exact = {pool: weights[pool] * size // len(members) for pool, members in pools.items()}
    common = math.gcd(*exact.values()) or 1
    per_server: dict[str, float] = {pool: w / common for pool, w in exact.items()}
    top = max(per_server.values())
    if limit is None or top <= limit:
        return _rounded(pools, weights, per_server, 1.0)
    for largest in range(limit, 0, -1):
        servers = _rounded(pools, weights, per_server, largest / top)
        if pool_weights(pools, servers) == dict(weights):
            return servers
    return _rounded(pools, weights, per_server, limit / top)


def _rounded(
    pools: Mapping[str, list[str]], weights: Mapping[str, int], per_server: Mapping[str, float], scale: float
) -> dict[str, int]:
    out: dict[str, int] = {}
    for pool, members in pools.items():
        # a pool with some weight keeps at least 1, so it is never switched off by rounding
        rounded = max(1, round(per_server[pool] * scale)) if weights[pool] > 0 else 0
        out.update(dict.fromkeys(members, rounded))
    return out


def pool_weights(pools: Mapping[str, list[str]], servers: Mapping[str, int]) -> dict[str, int]:
    """Each pool's percentage of the traffic given its servers' weights (the inverse of
    ``server_weights``, rounded to whole percents summing to 100). All at 0: every pool is 0."""
    sums = {pool: sum(servers.get(m, 0) for m in members) for pool, members in pools.items()}
    total = sum(sums.values())
    if total == 0:
        return dict.fromkeys(pools, 0)
    shares = {pool: 100 * s / total for pool, s in sums.items()}
    floors = {pool: math.floor(share) for pool, share in shares.items()}
    short = 100 - sum(floors.values())
    for pool in sorted(shares, key=lambda p: floors[p] - shares[p])[:short]:
        floors[pool] += 1
    return floors


class EnvironmentRouters(_Strict):
    """The part of an environment's policy about routers (mixed into ``EnvironmentPolicy``)."""

    routers: dict[str, RouterDef] = Field(default_factory=dict)

    @field_validator("routers")
    @classmethod
    def _router_names(cls, value: dict[str, RouterDef]) -> dict[str, RouterDef]:
        for name in value:
            if not re.fullmatch(NAME, name):
                raise ValueError(f"{name!r} is not a router name: use lowercase letters, digits and '-'")
        return value
