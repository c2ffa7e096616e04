"""The command router: any traffic switch a script can drive (a cloud load balancer, a service
mesh, a DNS weight).

Setting weights runs the argv with ``SHIPYARD_ROUTER`` (the router's name) and
``SHIPYARD_ROUTER_WEIGHTS`` (``stable=90,canary=10``) in its environment; exit 0 means applied.
If its last output line is in that same ``pool=weight,...`` form it is the read-back (what the
switch really runs with), otherwise the weights given are. Reading runs it with
``SHIPYARD_ROUTER_READ=1`` instead, and its last output line must be the weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from core.routing import RouterDef, check_weights, format_weights, parse_weights
from core.runtime.router_process import RouterError, describe_exit, run


class CommandRouter:
    def __init__(self, name: str, definition: RouterDef, workdir: Path | None = None) -> None:
        assert definition.command is not None
        self.name = name
        self.definition = definition
        self.argv: list[str] = definition.command
        self.workdir = workdir

    async def apply(self, weights: Mapping[str, int]) -> dict[str, int]:
        wanted = check_weights(self.definition, weights)
        said = await self._run({"SHIPYARD_ROUTER_WEIGHTS": format_weights(wanted)})
        return said if said is not None else wanted

    async def read(self) -> dict[str, int]:
        said = await self._run({"SHIPYARD_ROUTER_READ": "1"})
        if said is None:
            raise RouterError(
                f"the command router cannot read back its weights: {' '.join(self.argv)} with "
                "SHIPYARD_ROUTER_READ=1 printed no pool=weight,... line last"
            )
        return said

    async def _run(self, env: dict[str, str]) -> dict[str, int] | None:
        finished = await run(
            self.argv,
            timeout=self.definition.timeout,
            env={"SHIPYARD_ROUTER": self.name, **env},
            cwd=self.workdir,
        )
        if finished.code != 0:
            raise RouterError(describe_exit(self.argv, finished))
        lines = [line for line in finished.stdout.splitlines() if line.strip()]
        said = parse_weights(lines[-1]) if lines else None
        if said is None or set(said) != set(self.definition.pools):
            return None
        try:
            return check_weights(self.definition, said)
        except ValueError:
            return None
