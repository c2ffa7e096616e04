"""The haproxy router: server weights over the Runtime API (the admin socket).

One command per connection: ``set server <backend>/<server> weight N`` for each server of both
pools (each server's weight read first: a change refused halfway puts back the servers it had
set, so a blue/green switch never stays half made), then ``get weight <backend>/<server>``
(answered ``10 (initial 1)``) to read back what haproxy really runs with. No reload is needed,
so no connection is dropped. haproxy weights go 0-256 and a server at 0 takes no new traffic; a
pool's percent is split among its servers so the pool gets its share whatever its size. Servers
that gain weight are set first, so there is no moment with every server at 0.
The socket needs ``level admin``::

    global
        stats socket /run/haproxy/admin.sock mode 660 level admin
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Mapping

from core.routing import (
    HAPROXY_MAX_WEIGHT,
    HaproxyRouter,
    RouterDef,
    check_weights,
    pool_weights,
    server_weights,
)
from core.runtime.router_process import RouterError

_WEIGHT = re.compile(r"^(\d+) \(initial \d+\)$")
#: the largest answer read for one command
MAX_ANSWER = 64 * 1024


class HaproxyBackend:
    """One backend's servers, weighted per pool (see the module docstring)."""

    def __init__(self, name: str, definition: RouterDef) -> None:
        assert definition.haproxy is not None
        self.name = name
        self.definition = definition
        self.haproxy: HaproxyRouter = definition.haproxy

    async def apply(self, weights: Mapping[str, int]) -> dict[str, int]:
        wanted = server_weights(
            self.definition.pools, check_weights(self.definition, weights), HAPROXY_MAX_WEIGHT
        )
        changed: list[tuple[str, int]] = []  # (server, its weight before), in the order set
        async with self._within_timeout():
            try:
                for server, weight in sorted(wanted.items(), key=lambda item: -item[1]):
                    before = await self._weight(server)
                    await self._set(server, weight)
                    changed.append((server, before))
            except RouterError as exc:
                # a change refused halfway (a blue/green switch: the new colour raised, the old
                # one not yet lowered) is undone, so traffic stays where it was confirmed
                raise RouterError(exc.message + await self._put_back(changed)) from None
        return await self.read()

    async def read(self) -> dict[str, int]:
        servers: dict[str, int] = {}
        async with self._within_timeout():
            for members in self.definition.pools.values():
                for server in members:
                    servers[server] = await self._weight(server)
        return pool_weights(self.definition.pools, servers)

    async def _weight(self, server: str) -> int:
        answer = await self._ask(f"get weight {self.haproxy.backend}/{server}")
        match = _WEIGHT.match(answer)
        if match is None:
            raise RouterError(f"haproxy has no weight for {self._where(server)}: {answer or 'no answer'}")
        return int(match.group(1))

    async def _set(self, server: str, weight: int) -> None:
        answer = await self._ask(f"set server {self.haproxy.backend}/{server} weight {weight}")
        if answer:
            raise RouterError(f"haproxy refused weight {weight} for {self._where(server)}: {answer}")

    async def _put_back(self, changed: list[tuple[str, int]]) -> str:
        """Set the servers ``changed`` back to their weights before; "" when that worked (or
        nothing changed), else what is left as it was set, for the error."""
        for server, weight in reversed(changed):
            try:
                await self._set(server, weight)
            except RouterError as exc:
                return f"; putting the servers changed before it back failed too: {exc.message}"
        return ""

    @contextlib.asynccontextmanager
    async def _within_timeout(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self.definition.timeout):
                yield
        except TimeoutError:
            raise RouterError(
                f"haproxy at {self.haproxy.socket} did not answer within {self.definition.timeout:g}s"
            ) from None

    def _where(self, server: str) -> str:
        return f"server {server} of backend {self.haproxy.backend} (at {self.haproxy.socket})"

    async def _ask(self, command: str) -> str:
        """haproxy's answer to one command, stripped (empty: done, for ``set``)."""
        socket = self.haproxy.socket
        try:
            if socket.startswith("tcp://"):
                host, _, port = socket.removeprefix("tcp://").rpartition(":")
                reader, writer = await asyncio.open_connection(host, int(port))
            else:
                reader, writer = await asyncio.open_unix_connection(socket)
        except OSError as exc:
            raise RouterError(f"cannot connect to haproxy at {socket}: {exc.strerror or exc}") from None
        try:
            writer.write(command.encode() + b"\n")
            await writer.drain()
            answer = await reader.read(MAX_ANSWER)
            while chunk := await reader.read(MAX_ANSWER):
                answer += chunk
        except OSError as exc:
            raise RouterError(f"haproxy at {socket} dropped the connection: {exc.strerror or exc}") from None
        finally:
            writer.close()
            with contextlib.suppress(OSError):  # (closed before the loop moves on: nothing leaks)
                await writer.wait_closed()
        return answer.decode(errors="replace").strip()
