"""External address pools and subnet reservation math. Pure: no I/O.

A pool is one external network (``cloud``, ``public``, ...): its CIDR, its gateway and its
exclude ranges (Kube-OVN ``a..b`` form). Candidates are handed out lowest first; the
network, broadcast and gateway addresses and every excluded address are never candidates.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from ipaddress import IPv4Address, IPv4Network

LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")

DEFAULT_POOLS: dict[str, dict[str, object]] = {
    "cloud": {"cidr": "100.65.0.0/16", "gateway": "100.65.0.1", "exclude": []},
}


@dataclass(frozen=True)
class Range:
    first: IPv4Address
    last: IPv4Address

    def __contains__(self, ip: object) -> bool:
        return isinstance(ip, IPv4Address) and self.first <= ip <= self.last

    @classmethod
    def parse(cls, text: str) -> Range:
        """``10.0.0.5`` or ``10.0.0.5..10.0.0.9``."""
        first, sep, last = text.partition("..")
        lo = IPv4Address(first.strip())
        hi = IPv4Address(last.strip()) if sep else lo
        if hi < lo:
            raise ValueError(f"exclude range {text!r} ends before it starts")
        return cls(lo, hi)


@dataclass(frozen=True)
class Pool:
    """An address space: an external pool (``kind="pool"``) or a project subnet.

    ``prefix`` names it in the address book's keys: ``pool.<name>`` or ``subnet.<key>``.
    """

    name: str
    network: IPv4Network
    gateway: IPv4Address
    exclude: tuple[Range, ...] = ()
    kind: str = "pool"

    @property
    def prefix(self) -> str:
        return f"{self.kind}.{self.name}"

    def describe(self) -> str:
        label = "external network" if self.kind == "pool" else "subnet of project"
        return f"{label} {self.name} ({self.network})"

    def host_range(self) -> tuple[int, int]:
        """First and last host address as integers (network and broadcast excluded)."""
        base = int(self.network.network_address)
        return base + 1, base + self.network.num_addresses - 2

    def reserved_ranges(self) -> list[tuple[int, int]]:
        """The gateway and the exclude ranges as inclusive integer ranges."""
        return [(int(self.gateway), int(self.gateway))] + [
            (int(r.first), int(r.last)) for r in self.exclude
        ]

    @cached_property
    def _bounds(self) -> tuple[int, int, int, tuple[tuple[int, int], ...]]:
        """Network, broadcast, gateway and excludes as integers (reserved() is called for
        every recorded address of a space on each accounting pass)."""
        net = self.network
        excludes = tuple((int(r.first), int(r.last)) for r in self.exclude)
        return int(net.network_address), int(net.broadcast_address), int(self.gateway), excludes

    def reserved(self, ip: IPv4Address) -> bool:
        """Never handed out: outside, network, broadcast, gateway or excluded."""
        n = int(ip)
        first, last, gateway, excludes = self._bounds
        return (
            not first <= n <= last
            or n in (first, last, gateway)
            or any(a <= n <= b for a, b in excludes)
        )

    def candidates(self, start: int = 0) -> Iterator[IPv4Address]:
        """Allocatable addresses, lowest first, from host offset ``start``."""
        base = int(self.network.network_address)
        for offset in range(max(start, 1), self.network.num_addresses - 1):
            ip = IPv4Address(base + offset)
            if not self.reserved(ip):
                yield ip

    def offset(self, ip: IPv4Address) -> int:
        return int(ip) - int(self.network.network_address)

    @cached_property
    def _capacity(self) -> int:
        lo, hi = self.host_range()
        covered = 0
        cursor = lo
        for a, b in sorted(self.reserved_ranges()):
            a, b = max(a, cursor), min(b, hi)
            if a <= b:
                covered += b - a + 1
                cursor = b + 1
        return max(hi - lo + 1 - covered, 0)

    def capacity(self) -> int:
        """How many addresses can ever be handed out (arithmetic, not a scan)."""
        return self._capacity


def parse_pools(config: Mapping[str, Mapping[str, object]]) -> dict[str, Pool]:
    """Pools from ``{"cloud": {"cidr": ..., "gateway": ..., "exclude": [...]}}``."""
    pools = {}
    for name, spec in config.items():
        if not LABEL.fullmatch(name):  # a KV key token and an OVN network name
            raise ValueError(f"pool {name!r}: the name must be a lower-case DNS label")
        network = IPv4Network(str(spec["cidr"]), strict=True)
        gateway = IPv4Address(str(spec.get("gateway", network.network_address + 1)))
        if gateway not in network:
            raise ValueError(f"pool {name}: gateway {gateway} is outside {network}")
        if network.prefixlen < 31 and gateway in (
            network.network_address,
            network.broadcast_address,
        ):
            raise ValueError(f"pool {name}: gateway {gateway} is not a usable address")
        raw_exclude = spec.get("exclude", [])
        if not isinstance(raw_exclude, list):
            raise ValueError(f"pool {name}: exclude must be a list")
        exclude = tuple(Range.parse(str(r)) for r in raw_exclude)
        pools[name] = Pool(name, network, gateway, exclude)
    return pools


def load_pools(raw_json: str | None) -> dict[str, Pool]:
    """Pools from ``VPCBUS_POOLS`` (JSON) or the defaults (cloud only; public disabled)."""
    return parse_pools(json.loads(raw_json) if raw_json else DEFAULT_POOLS)


def overlapping_pool(cidr: IPv4Network, pools: Mapping[str, Pool]) -> Pool | None:
    return next((p for p in pools.values() if p.network.overlaps(cidr)), None)


def subnet_reserved(cidr: IPv4Network, gateway: IPv4Address) -> set[IPv4Address]:
    """A project subnet's addresses that no workload may get."""
    return {cidr.network_address, cidr.broadcast_address, gateway}


def project_subnet(project_key: str, cidr: IPv4Network, gateway: IPv4Address) -> Pool:
    """A project's subnet as an address space (network, broadcast, gateway reserved)."""
    return Pool(project_key, cidr, gateway, kind="subnet")


def parse_ip(text: str) -> IPv4Address:
    return ipaddress.IPv4Address(text)
