"""The nginx router: Shipyard owns one ``upstream`` block in a file nginx includes.

Setting weights writes the whole block to a temporary file beside the include and moves it in
place (``os.replace``, so nginx never reads half a file), runs the router's ``test`` argv
(``nginx -t``), and on success its ``reload`` argv (``nginx -s reload``: new workers take new
connections, old ones finish theirs). When the test or the reload fails the previous file is put
back the same way and ``RouterError`` carries nginx's own words.

nginx open source has no API to read the weights it runs with (that is NGINX Plus), so *read
back* parses the include file: the file ``nginx -t`` accepted and nginx reloaded is the truth.
nginx refuses ``weight=0``; a server with no share is written ``down``. The reload returns once
nginx has been told, so the router waits ``settle`` (half a second) before reading back: by then
new connections go to the new workers; the old ones only finish what they hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

from core.routing import NginxRouter, RouterDef, check_weights, format_weights, pool_weights, server_weights
from core.runtime.router_process import RouterError, describe_exit, run

_SERVER = re.compile(r"^\s*server\s+(\S+)((?:\s+[^;]*)?);")
_COMMENT = re.compile(r"#.*$")


def render_upstream(name: str, definition: RouterDef, weights: Mapping[str, int]) -> str:
    """The include file's text for ``weights`` (pool -> percent)."""
    nginx = definition.nginx
    assert nginx is not None
    servers = server_weights(definition.pools, check_weights(definition, weights))
    options = f" {nginx.server_options}" if nginx.server_options else ""
    lines = [
        f"# Written by Shipyard for router {name}: {format_weights(weights)}. Do not edit:",
        "# Shipyard rewrites this file whenever it moves traffic.",
        f"upstream {nginx.upstream} {{",
    ]
    for server, weight in servers.items():
        share = f"weight={weight}" if weight > 0 else "down"
        lines.append(f"    server {server} {share}{options};")
    if nginx.keepalive is not None:
        lines.append(f"    keepalive {nginx.keepalive};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def parse_upstream(text: str, upstream: str) -> dict[str, int]:
    """Server -> weight in the ``upstream`` block of ``text`` (``down`` is 0, no weight is 1)."""
    servers: dict[str, int] = {}
    inside = False
    for raw in text.splitlines():
        line = _COMMENT.sub("", raw).strip()
        if not inside:
            inside = re.fullmatch(rf"upstream\s+{re.escape(upstream)}\s*\{{", line) is not None
            continue
        if line.startswith("}"):
            return servers
        match = _SERVER.match(line)
        if match is None:
            continue
        params = match.group(2).split()
        weight = next((int(p[7:]) for p in params if p.startswith("weight=") and p[7:].isdigit()), 1)
        servers[match.group(1)] = 0 if "down" in params else weight
    raise ValueError(f"no complete upstream {upstream} block")


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file in ``path``'s folder and move it over ``path``."""
    fd, staged = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(staged, 0o644)
        os.replace(staged, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staged)
        raise


class NginxUpstream:
    """One router's upstream block (see the module docstring). Changes to one include file must
    not run concurrently: the caller applies one change at a time per router."""

    def __init__(self, name: str, definition: RouterDef) -> None:
        assert definition.nginx is not None
        self.name = name
        self.definition = definition
        self.nginx: NginxRouter = definition.nginx
        self.path = Path(self.nginx.include)

    async def apply(self, weights: Mapping[str, int]) -> dict[str, int]:
        text = render_upstream(self.name, self.definition, weights)
        try:
            previous = self.path.read_bytes()
        except FileNotFoundError:
            previous = None
        except OSError as exc:
            raise RouterError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        self._put(text.encode())
        try:
            await self._run(self.nginx.test, "refused the new weights")
            await self._run(self.nginx.reload, "did not reload")
        except RouterError:
            self._restore(previous)
            raise
        await asyncio.sleep(self.nginx.settle)
        return await self.read()

    async def read(self) -> dict[str, int]:
        try:
            text = self.path.read_text()
        except OSError as exc:
            raise RouterError(
                f"cannot read {self.path} (has Shipyard set weights yet?): {exc.strerror or exc}"
            ) from None
        try:
            servers = parse_upstream(text, self.nginx.upstream)
        except ValueError as exc:
            raise RouterError(f"{self.path}: {exc}") from None
        expected = {m for members in self.definition.pools.values() for m in members}
        if set(servers) != expected:
            raise RouterError(
                f"{self.path} names servers {', '.join(sorted(servers)) or 'none'}, "
                f"not the router's pools' {', '.join(sorted(expected))}"
            )
        return pool_weights(self.definition.pools, servers)

    def _put(self, data: bytes) -> None:
        try:
            write_atomically(self.path, data)
        except OSError as exc:
            raise RouterError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def _restore(self, previous: bytes | None) -> None:
        if previous is None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        else:
            self._put(previous)

    async def _run(self, argv: list[str], failed: str) -> None:
        finished = await run(argv, timeout=self.definition.timeout)
        if finished.code != 0:
            raise RouterError(f"nginx {failed}: {describe_exit(argv, finished)}")
