"""A project's NAT rules as plain data. Pure."""

from __future__ import annotations

from dataclasses import dataclass


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


def build(key: str, namespace: str, cidr_block: str, gateway_eip: str) -> DesiredNat:
    """SNAT of the whole project subnet to its default-gw EIP, on router ``namespace``."""
    return DesiredNat(key, namespace, (NatRule("snat", gateway_eip, cidr_block),))
