"""A project's NAT rules as plain data. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vpcbus_proto.status import FloatingIp, LoadBalancer


@dataclass(frozen=True)
class NatRule:
    type: str  # "snat" | "dnat_and_snat"
    external_ip: str
    logical_ip: str


@dataclass(frozen=True)
class Balancer:
    """One OVN ``Load_Balancer`` row: a service's ports of one protocol on its EIP."""

    name: str  # <namespace>-svc-<service>-<tcp|udp>
    protocol: str  # "tcp" | "udp"
    vips: tuple[tuple[str, str], ...]  # ("<eip>:<port>", "<ep>:<target>,<ep>:<target>")


@dataclass(frozen=True)
class DesiredNat:
    key: str
    router: str
    rules: tuple[NatRule, ...]
    balancers: tuple[Balancer, ...] = ()


def balancers(namespace: str, services: Sequence[LoadBalancer]) -> tuple[Balancer, ...]:
    """An OVN load balancer per ready service and protocol, VIPs ``EIP:port`` to every
    endpoint's ``target port``. A service without endpoints has no row (nothing to reach)."""
    out = []
    for svc in sorted(services, key=lambda s: s.name):
        if not (svc.ready and svc.ingress_ip and svc.endpoints):
            continue
        for protocol in ("tcp", "udp"):
            ports = [p for p in svc.ports if p.protocol.lower() == protocol and p.ready]
            if not ports:
                continue
            vips = tuple(
                (
                    f"{svc.ingress_ip}:{p.port}",
                    ",".join(f"{ep}:{p.target_port}" for ep in svc.endpoints),
                )
                for p in sorted(ports, key=lambda p: p.port)
            )
            out.append(Balancer(f"{namespace}-svc-{svc.name}-{protocol}", protocol, vips))
    return tuple(out)


def build(
    key: str,
    namespace: str,
    cidr_block: str,
    gateway_eip: str,
    fips: Sequence[FloatingIp] = (),
    services: Sequence[LoadBalancer] = (),
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
    return DesiredNat(key, namespace, tuple(rules), balancers(namespace, services))
