"""A project's DNS zone as the DNS service serves it: the reply of ``vpcbus.svc.dns.zone``.

The DNS service answers from the OVN ``DNS`` row it keeps on the project switch (what the
chassis actually answers), and names each record's owner from the desired zone; a record
the desired zone does not have is ``stale`` (a drift the next reconcile removes).

Lookups follow OVN 23.03's native DNS: a case-insensitive exact match of the whole name, A
records only (see :func:`lookup`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vpcbus_proto.status import Resolver, _Model

#: Who a record is for: the router, a VM or pod's default NIC, a LoadBalancer service (its
#: endpoints) or its ``-ext`` name (its EIP); ``stale``: served but no longer desired.
Source = Literal["gateway", "workload", "service", "service-ext", "stale"]

#: The endpoint's subject; only the DNS service answers it.
ZONE_ENDPOINT = "vpcbus.svc.dns.zone"


class ZoneRecord(_Model):
    """One name of the zone and the IPv4 addresses OVN answers for it."""

    name: str = Field(description="Lower-case FQDN without the trailing dot.")
    addresses: list[str]
    source: Source
    owner: str = Field(default="", description="e.g. `vm/web`, `service/shop`; empty: none.")


class ZoneReply(_Model):
    """The reply of the zone endpoint for one project."""

    project: str = Field(description="The project key, `<organization>.<project>`.")
    zone: str
    served: bool = Field(description="A DNS row is attached to the project switch.")
    resolver: Resolver | None = Field(
        default=None, description="How the project's workloads resolve; null: no project."
    )
    records: list[ZoneRecord] = Field(default_factory=list, description="Sorted by name.")

    def lookup(self, name: str) -> ZoneRecord | None:
        """The record OVN answers an A query for ``name`` with (absolute, any case)."""
        wanted = name.rstrip(".").lower()
        return next((r for r in self.records if r.name == wanted), None)

    def candidates(self, name: str) -> list[str]:
        """The names a stub resolver tries for ``name`` with this project's search list
        (glibc's rule: a name with at least ``ndots`` dots, default 1, is tried as is first;
        a name ending in a dot only as is)."""
        if name.endswith("."):
            return [name.rstrip(".").lower()]
        name = name.lower()
        ndots = 1
        for option in self.resolver.options if self.resolver else []:
            if option.startswith("ndots:") and option[6:].isdigit():
                ndots = int(option[6:])
        expanded = [
            f"{name}.{domain}" for domain in (self.resolver.search if self.resolver else [])
        ]
        return [name, *expanded] if name.count(".") >= ndots else [*expanded, name]
