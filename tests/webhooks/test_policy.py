"""The address policy as pure functions: nothing here connects anywhere, and the resolver test
answers from a fixed table instead of DNS."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from bot.webhooks.policy import AddressRefused, AllowList, GuardedResolver, Policy, check_name, refusal

REFUSED = {
    "127.0.0.1": "loopback",
    "127.8.9.10": "loopback",
    "10.0.0.1": "private",
    "172.16.5.4": "private",
    "172.31.255.255": "private",
    "192.168.1.1": "private",
    "100.64.0.1": "carrier-grade NAT",
    "100.127.255.254": "carrier-grade NAT",
    "169.254.169.254": "cloud metadata",
    "169.254.170.2": "cloud metadata",
    "100.100.100.200": "cloud metadata",
    "169.254.1.1": "link-local",
    "0.0.0.0": "unspecified",
    "224.0.0.251": "multicast",
    "239.255.255.250": "multicast",
    "255.255.255.255": "broadcast",
    "240.0.0.1": "reserved",
    "192.0.2.10": "documentation",
    "198.18.0.1": "benchmarking",
    "::1": "loopback",
    "::": "unspecified",
    "fc00::1": "unique local",
    "fd12:3456::1": "unique local",
    "fe80::1": "link-local",
    "ff02::1": "multicast",
    "fd00:ec2::254": "cloud metadata",
    "2001:db8::1": "documentation",
    "::ffff:127.0.0.1": "loopback",  # IPv4-mapped
    "::ffff:169.254.169.254": "cloud metadata",
    "64:ff9b::a9fe:a9fe": "cloud metadata",  # NAT64 of 169.254.169.254
    "2002:7f00:1::1": "loopback",  # 6to4 of 127.0.0.1
    "2002:0a00:0001::1": "private",  # 6to4 of 10.0.0.1
    "::10.0.0.1": "private",  # IPv4-compatible
}
PUBLIC = ["8.8.8.8", "1.1.1.1", "140.82.112.3", "2606:4700:4700::1111", "2a00:1450:4001:80b::200e"]


@pytest.mark.parametrize(("address", "why"), sorted(REFUSED.items()))
def test_addresses_inside_are_refused_with_the_reason(address: str, why: str) -> None:
    found = refusal(ipaddress.ip_address(address))
    assert found is not None and why in found, found


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


def test_the_allow_list_names_networks_addresses_and_hosts() -> None:
    allow = AllowList.parse(["127.0.0.1", "10.20.0.0/16", "::1", "Hooks.Internal.", " "])
    policy = Policy(allow)
    assert policy.check("127.0.0.1", ipaddress.ip_address("127.0.0.1")) is None
    assert policy.check("x", ipaddress.ip_address("10.20.3.4")) is None
    assert policy.check("hooks.internal", ipaddress.ip_address("192.168.9.9")) is None  # by name
    assert policy.check("x", ipaddress.ip_address("::1")) is None
    still = policy.check("other.internal", ipaddress.ip_address("10.21.0.1"))
    assert still is not None and "private" in still and "SHIPYARD_WEBHOOK_ALLOW" in still
    assert policy.check_literal("[::1]") is None and policy.check_literal("example.com") is None
    assert "loopback" in (Policy().check_literal("127.0.0.2") or "")
    with pytest.raises(ValueError, match="neither an address"):
        AllowList.parse(["not a host!"])


class Table(AbstractResolver):
    """A resolver that answers from a table: DNS without the network."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host not in self.table:
            raise OSError(socket.EAI_NONAME, "Name or service not known")
        return [
            ResolveResult(hostname=host, host=ip, port=port, family=socket.AF_INET, proto=0, flags=0)
            for ip in self.table[host]
        ]

    async def close(self) -> None:
        pass


async def test_every_address_a_name_resolves_to_is_checked_when_connecting() -> None:
    table = Table(
        {
            "public.example": ["93.184.215.14"],
            "rebound.example": ["93.184.215.14", "10.0.0.7"],  # one bad record is enough
            "metadata.example": ["169.254.169.254"],
        }
    )
    resolver = GuardedResolver(Policy(), table)
    assert [r["host"] for r in await resolver.resolve("public.example", 443)] == ["93.184.215.14"]
    with pytest.raises(AddressRefused, match=r"rebound.example \(10.0.0.7\) is a private address"):
        await resolver.resolve("rebound.example", 443)
    with pytest.raises(AddressRefused, match="cloud metadata"):
        await resolver.resolve("metadata.example", 80)
    allowed = GuardedResolver(Policy(AllowList.parse(["10.0.0.0/8"])), table)
    assert len(await allowed.resolve("rebound.example", 443)) == 2


async def test_registration_resolves_the_name_and_checks_it() -> None:
    table = Table({"internal.example": ["192.168.4.4"], "public.example": ["93.184.215.14"]})
    assert await check_name(Policy(), "public.example", table) is None
    assert "private" in (await check_name(Policy(), "internal.example", table) or "")
    assert "does not resolve" in (await check_name(Policy(), "nowhere.example", table) or "")
    assert "metadata" in (await check_name(Policy(), "169.254.169.254", table) or "")
    assert await check_name(Policy(AllowList.parse(["internal.example"])), "internal.example", table) is None


async def test_a_host_name_no_resolver_accepts_is_refused_not_a_crash() -> None:
    """IDNA refuses a label over 63 characters; that is a bad URL, not a server error."""
    why = await check_name(Policy(), "a" * 300 + ".example")
    assert why is not None and "is not a valid host name" in why
