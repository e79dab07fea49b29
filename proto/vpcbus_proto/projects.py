"""The project spec, matching Kube-DC's ``Project`` networking fields.

Structural validation lives here so every service rejects the same inputs with the same
words; pool-dependent checks (public projects disabled, overlap with an external pool,
exhausted pool) belong to IPAM, which knows the pools.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from vpcbus_proto import names

EgressNetworkType = Literal["cloud", "public"]

#: Smallest accepted subnet: network, gateway and broadcast plus five usable addresses.
MAX_PREFIX = 29
#: Largest accepted subnet.
MIN_PREFIX = 8

_FORBIDDEN_RANGES = [
    ipaddress.IPv4Network(n)
    for n in ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4")
]


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class ProjectRef(_Model):
    """Identifies a project: ``organization`` and project ``name``."""

    organization: names.Label = Field(description="Organization (DNS-1123 label).")
    name: names.Label = Field(description="Project name (DNS-1123 label).")

    @model_validator(mode="after")
    def _namespace_fits(self) -> ProjectRef:
        if len(self.namespace) > 63:
            raise ValueError(f"backing namespace {self.namespace!r} is longer than 63 characters")
        return self

    @property
    def namespace(self) -> str:
        """The backing namespace ``<org>-<project>``."""
        return names.namespace(self.organization, self.name)

    @property
    def key(self) -> str:
        return names.project_key(self.organization, self.name)


class ProjectSpec(ProjectRef):
    """A project's networking spec (Kube-DC ``Project.spec`` plus its identity)."""

    cidr_block: str = Field(
        description="Private IPv4 subnet of the project VPC, e.g. 10.0.0.0/24 (/8 to /29)."
    )
    egress_network_type: EgressNetworkType = Field(
        description="External network of the default gateway EIP; immutable."
    )
    gw_lan_ip: str | None = Field(
        default=None,
        description="Gateway address inside cidrBlock; defaults to the first usable address.",
    )
    egress_allowlist: list[str] | None = Field(
        default=None,
        description="With egress network isolation on (VPCBUS_EGRESS_ISOLATION): external "
        "addresses (IPv4 CIDRs) the project may reach besides its own EIPs and the gateways.",
    )

    @field_validator("egress_allowlist")
    @classmethod
    def _valid_allowlist(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        out = []
        for item in value:
            try:
                out.append(str(ipaddress.IPv4Network(item, strict=True)))
            except ValueError as exc:
                raise ValueError(f"egressAllowlist {item!r} is not an IPv4 CIDR: {exc}") from None
        return out

    @field_validator("cidr_block")
    @classmethod
    def _valid_cidr(cls, value: str) -> str:
        return _checked_cidr(value)

    @model_validator(mode="after")
    def _gateway_inside(self) -> ProjectSpec:
        if self.gw_lan_ip is None:
            return self
        try:
            gw = ipaddress.IPv4Address(self.gw_lan_ip)
        except ValueError:
            raise ValueError(f"gwLanIp {self.gw_lan_ip!r} is not an IPv4 address") from None
        net = self.network
        if gw not in net:
            raise ValueError(f"gwLanIp {gw} is outside cidrBlock {net}")
        if gw in (net.network_address, net.broadcast_address):
            raise ValueError(f"gwLanIp {gw} is the network or broadcast address of {net}")
        return self

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.cidr_block)

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """The router's address in the project subnet: ``gwLanIp`` or the first usable one."""
        if self.gw_lan_ip is not None:
            return ipaddress.IPv4Address(self.gw_lan_ip)
        return self.network.network_address + 1

    @property
    def ref(self) -> ProjectRef:
        return ProjectRef(organization=self.organization, name=self.name)


@functools.lru_cache(maxsize=4096)
def _checked_cidr(value: str) -> str:
    """``cidrBlock`` checked and normalised; raises ``ValueError`` with the reason. Cached:
    every service parses the spec of a project again on each read of its record, and these
    checks were ~9 % of NAT's CPU in a burst (bench/). A failure is not cached."""
    try:
        net = ipaddress.IPv4Network(value, strict=True)
    except ValueError as exc:
        raise ValueError(f"cidrBlock {value!r} is not a valid IPv4 CIDR: {exc}") from None
    if "/" not in value:
        raise ValueError(f"cidrBlock {value!r} needs a prefix length, e.g. {value}/24")
    if net.prefixlen > MAX_PREFIX:
        raise ValueError(
            f"cidrBlock {value} is too small: the prefix must be /{MAX_PREFIX} or shorter"
        )
    if net.prefixlen < MIN_PREFIX:
        raise ValueError(
            f"cidrBlock {value} is too large: the prefix must be /{MIN_PREFIX} or longer"
        )
    for bad in _FORBIDDEN_RANGES:
        if net.overlaps(bad):
            raise ValueError(f"cidrBlock {value} overlaps the reserved range {bad}")
    return str(net)
