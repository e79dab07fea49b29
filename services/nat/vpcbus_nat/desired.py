"""A project's NAT rules as plain data. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vpcbus_proto.status import FloatingIp


@dataclass(frozen=True)
class NatRule:
    type: str  # "snat" | "dnat_and_snat"
    external_ip: str
    logical_ip: str


@dataclass(frozen=True)
class DesiredNat:
    key: str
    router: str
    rules: tuple[NatRule, ...]


def build(
    key: str, namespace: str, cidr_block: str, gateway_eip: str, fips: Sequence[FloatingIp] = ()
) -> DesiredNat:
    """On router ``namespace``: SNAT of the whole project subnet to its default-gw EIP, and a
    ``dnat_and_snat`` (1:1, all ports, both ways) per ready floating IP, which OVN prefers to
    the subnet's SNAT for its target (the longer match), so the target's outbound traffic
    leaves from its FIP."""
    rules = [NatRule("snat", gateway_eip, cidr_block)]
    rules += [
        NatRule("dnat_and_snat", f.external_ip, f.target_ip)
        for f in sorted(fips, key=lambda f: f.name)
        if f.ready and f.external_ip and f.target_ip
    ]
    return DesiredNat(key, namespace, tuple(rules))
