"""Where webhooks may connect: the address policy that keeps a subscription URL from reaching
the server's own network (server-side request forgery).

``refusal(ip)`` classifies one address and says why it is refused (loopback, private,
link-local, carrier-grade NAT, multicast, unspecified, reserved, cloud metadata; IPv6 unique-local
and link-local, and IPv4 addresses embedded in IPv6 by mapping, NAT64 or 6to4). It is a pure
function: it connects nowhere. ``AllowList`` is the administrator's exception
(``SHIPYARD_WEBHOOK_ALLOW``: CIDRs and host names). ``GuardedResolver`` applies both when aiohttp
resolves a name for a connection, to every address the name resolves to, so a name that pointed
somewhere public at registration and somewhere private later (DNS rebinding) is still refused;
``Policy.check_literal`` covers URLs that name an address directly, which aiohttp connects to
without resolving.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: checked in order: the first network that holds the address names the reason
REFUSED: tuple[tuple[Network, str], ...] = tuple(
    (ipaddress.ip_network(net), why)
    for net, why in (
        ("169.254.169.254/32", "the cloud metadata service"),
        ("169.254.170.2/32", "the cloud metadata service (ECS task metadata)"),
        ("100.100.100.200/32", "the cloud metadata service (Alibaba Cloud)"),
        ("fd00:ec2::254/128", "the cloud metadata service (EC2 over IPv6)"),
        ("0.0.0.0/8", "an unspecified address ('this network')"),
        ("127.0.0.0/8", "a loopback address"),
        ("10.0.0.0/8", "a private address"),
        ("172.16.0.0/12", "a private address"),
        ("192.168.0.0/16", "a private address"),
        ("100.64.0.0/10", "a carrier-grade NAT address (shared address space)"),
        ("169.254.0.0/16", "a link-local address"),
        ("192.0.0.0/24", "an IETF protocol assignment"),
        ("192.0.2.0/24", "a documentation address"),
        ("198.51.100.0/24", "a documentation address"),
        ("203.0.113.0/24", "a documentation address"),
        ("198.18.0.0/15", "a benchmarking address"),
        ("224.0.0.0/4", "a multicast address"),
        ("255.255.255.255/32", "the broadcast address"),
        ("240.0.0.0/4", "a reserved address"),
        ("::/128", "an unspecified address"),
        ("::1/128", "a loopback address"),
        ("fc00::/7", "a unique local (private) IPv6 address"),
        ("fe80::/10", "a link-local address"),
        ("fec0::/10", "a site-local address"),
        ("ff00::/8", "a multicast address"),
        ("100::/64", "a discard-only address"),
        ("2001:db8::/32", "a documentation address"),
    )
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def refusal(ip: Address) -> str | None:
    """Why a webhook must not connect to ``ip`` (None: a public address)."""
    embedded = _embedded_v4(ip)
    if embedded is not None:
        why = refusal(embedded)
        return f"{why} ({embedded} inside {ip})" if why else None
    for network, why in REFUSED:
        if ip.version == network.version and ip in network:
            return why
    if not ip.is_global:
        return "not a public address"
    return None


def _embedded_v4(ip: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4, IPv4-compatible)."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in IPV4_COMPATIBLE and int(ip) > 1:  # ::a.b.c.d (deprecated); :: and ::1 are their own
        return ipaddress.IPv4Address(int(ip))
    return None


@dataclass(frozen=True)
class AllowList:
    """Addresses and host names an administrator lets webhooks reach despite the policy."""

    networks: tuple[Network, ...] = ()
    hosts: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        """CIDRs (``10.1.0.0/16``), single addresses (``::1``) or host names (``hooks.internal``);
        ``ValueError`` names an entry that is none of these."""
        networks, hosts = [], set()
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            name = entry.lower().rstrip(".")
            if not all(part and len(part) <= 63 for part in name.split(".")) or not all(
                c.isalnum() or c in "-." for c in name
            ):
                raise ValueError(f"{entry!r} is neither an address, a CIDR block nor a host name")
            hosts.add(name)
        return cls(tuple(networks), frozenset(hosts))

    def allows(self, host: str, ip: Address) -> bool:
        if host.lower().rstrip(".") in self.hosts:
            return True
        return any(ip.version == n.version and ip in n for n in self.networks)


class AddressRefused(OSError):
    """A webhook URL leads to an address the policy refuses. An ``OSError``, so aiohttp reports
    it like any other failure to connect."""


@dataclass(frozen=True)
class Policy:
    allow: AllowList = AllowList()

    def check(self, host: str, ip: Address) -> str | None:
        """Why ``host`` (which resolved to ``ip``) may not be reached; None if it may."""
        if self.allow.allows(host, ip):
            return None
        why = refusal(ip)
        if why is None:
            return None
        shown = host if host == str(ip) else f"{host} ({ip})"
        return f"{shown} is {why}; an administrator can allow it with SHIPYARD_WEBHOOK_ALLOW"

    def check_literal(self, host: str) -> str | None:
        """For a URL whose host is an address: why it is refused. None for names (they are
        checked when resolved) and for allowed addresses."""
        ip = literal(host)
        return self.check(host, ip) if ip is not None else None


def literal(host: str) -> Address | None:
    """``host`` as an address if it is one (``[::1]`` brackets allowed), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, refusing a name when any address it resolves to is refused."""

    def __init__(self, policy: Policy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self.inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self.inner.resolve(host, port, family)
        for info in found:
            ip = ipaddress.ip_address(info["host"].split("%", 1)[0])
            why = self.policy.check(host, ip)
            if why is not None:
                raise AddressRefused(why)
        return found

    async def close(self) -> None:
        await self.inner.close()


async def check_name(policy: Policy, host: str, resolver: AbstractResolver | None = None) -> str | None:
    """Resolve ``host`` (at registration) and say why it is refused, if it is."""
    if literal(host) is not None:
        return policy.check_literal(host)
    if host.lower().rstrip(".") in policy.allow.hosts:
        return None
    own = resolver is None
    resolver = resolver or DefaultResolver()
    try:
        found: list[Any] = await resolver.resolve(host, 0, socket.AF_UNSPEC)
    except OSError as exc:
        return f"{host} does not resolve ({exc.strerror or exc})"
    except (UnicodeError, ValueError):  # e.g. a label over 63 characters (IDNA refuses it)
        return f"{host[:80]} is not a valid host name"
    finally:
        if own:
            await resolver.close()
    for info in found:
        why = policy.check(host, ipaddress.ip_address(info["host"].split("%", 1)[0]))
        if why is not None:
            return why
    return None
