"""A project's DNS zone as plain data. Pure.

Zone of a project with backing namespace ``N``: ``N.svc.cluster.local``, Kubernetes style.
Names in it, each answered by OVN with A records only:

* ``gateway.N.svc.cluster.local``: the VPC router;
* ``<svc>.N.svc.cluster.local``: a ready LoadBalancer service, at its endpoints (the backends'
  project addresses, as a Kubernetes headless service answers: vpcbus has no cluster IPs);
* ``<svc>-ext.N.svc.cluster.local``: the same service at its external IP (the EIP it is
  published on), as Kube-DC's ``<svc>-ext`` service; it follows the EIP;
* ``<name>.N.svc.cluster.local`` (:func:`vpcbus_proto.names.workload_fqdn`): every VM and pod
  by name, at the address IPAM gave its ``default`` interface (other interfaces have no name).

One name, one owner: the router's name is reserved, and a service's names win over a
workload of the same name (the workload's name is then *shadowed* and reported). A record
exists only while its owner is ready in IPAM's status, so a re-addressed, re-published or
removed owner never leaves a stale answer.

The project's workloads resolve through :class:`~vpcbus_proto.status.Resolver`: the
platform's upstream resolvers (OVN answers the zone from the chassis whatever the query's
destination, and lets every other query through to the upstream via the project's SNAT).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from vpcbus_proto import names
from vpcbus_proto.members import DEFAULT_INTERFACE
from vpcbus_proto.status import LoadBalancer, Resolver, WorkloadAddress
from vpcbus_proto.zones import Source, ZoneRecord

CLUSTER_DOMAIN = names.CLUSTER_DOMAIN
#: The router's name in every zone.
GATEWAY = "gateway"
#: Fast failure for what OVN 23.03 leaves unanswered (see README "DNS"): one 1 s try.
RESOLVER_OPTIONS = ("timeout:1", "attempts:1")


def zone(namespace: str) -> str:
    return names.zone(namespace)


@dataclass(frozen=True)
class Name:
    """One record of the zone: its addresses and who it is for."""

    addresses: tuple[str, ...]
    source: Source
    owner: str


@dataclass(frozen=True)
class DesiredZone:
    key: str
    switch: str
    #: lower-case FQDN (no trailing dot) -> the record; a project may have thousands
    names: dict[str, Name]
    resolver: Resolver
    #: ``<owner> (<name>)`` of each name hidden by an earlier owner of the same name
    shadowed: tuple[str, ...] = field(default_factory=tuple)

    @property
    def records(self) -> dict[str, str]:
        """The ``records`` column of the zone's ``DNS`` row: name -> space-separated IPs."""
        return {name: " ".join(rec.addresses) for name, rec in self.names.items()}

    def count(self, source: Source) -> int:
        return sum(1 for rec in self.names.values() if rec.source == source)

    def objects(self) -> list[str]:
        """The gateway's and services' names (the status counts workload names instead of
        listing them: there may be thousands)."""
        return [f"DNS/{n}" for n, rec in sorted(self.names.items()) if rec.source != "workload"]

    def listing(self, served: dict[str, str]) -> list[ZoneRecord]:
        """``served`` (a DNS row's records) with each name's owner; a name this zone does not
        want, or wants at other addresses, is ``stale``."""
        out = []
        for name, value in sorted(served.items()):
            want = self.names.get(name)
            addresses = value.split()
            if want is None or list(want.addresses) != addresses:
                out.append(ZoneRecord(name=name, addresses=addresses, source="stale"))
            else:
                out.append(
                    ZoneRecord(name=name, addresses=addresses, source=want.source, owner=want.owner)
                )
        return out


Records = list[tuple[str, Name]]


def workload_records(namespace: str, nics: Sequence[WorkloadAddress]) -> Records:
    """``<name>.N.svc.cluster.local`` -> IP for every NIC on the default interface (a VM and
    a pod of the same name both want it: VMs first, then by name)."""
    default = (nic for nic in nics if nic.interface == DEFAULT_INTERFACE)
    return [
        (
            names.workload_fqdn(namespace, nic.name),
            Name((nic.ip_address,), "workload", f"{nic.kind}/{nic.name}"),
        )
        for nic in sorted(default, key=lambda n: (n.kind != "vm", n.name))
    ]


def service_records(namespace: str, services: Sequence[LoadBalancer]) -> Records:
    """``<svc>`` -> its endpoints and ``<svc>-ext`` -> its ingress IP, for ready services."""
    out: Records = []
    for svc in sorted(services, key=lambda s: s.name):
        if not svc.ready:
            continue
        owner = f"service/{svc.name}"
        if svc.endpoints:
            addresses = tuple(sorted(set(svc.endpoints), key=_ip_key))
            out.append((names.service_fqdn(namespace, svc.name), Name(addresses, "service", owner)))
        if svc.ingress_ip:
            ext = Name((svc.ingress_ip,), "service-ext", owner)
            out.append((names.service_ext_fqdn(namespace, svc.name), ext))
    return out


def resolver(namespace: str, gateway_ip: str, upstream: Sequence[str]) -> Resolver:
    """What a workload's resolv.conf says: the upstream resolvers, else the router."""
    domain = CLUSTER_DOMAIN
    return Resolver(
        zone=zone(namespace),
        nameservers=list(upstream) or [gateway_ip],
        search=[zone(namespace), f"svc.{domain}", domain],
        options=list(RESOLVER_OPTIONS),
    )


def build(
    key: str,
    namespace: str,
    gateway_ip: str,
    nics: Sequence[WorkloadAddress] = (),
    services: Sequence[LoadBalancer] = (),
    upstream: Sequence[str] = (),
) -> DesiredZone:
    fixed = [(f"{GATEWAY}.{zone(namespace)}", Name((gateway_ip,), "gateway", "router"))]
    chosen: dict[str, Name] = {}
    shadowed: list[str] = []
    layers = (fixed, service_records(namespace, services), workload_records(namespace, nics))
    for layer in layers:  # first come, first served: router, services, workloads
        for name, rec in layer:
            if name in chosen:
                shadowed.append(f"{rec.owner} ({name})")
            else:
                chosen[name] = rec
    return DesiredZone(
        key=key,
        switch=f"{namespace}-default",
        names=chosen,
        resolver=resolver(namespace, gateway_ip, upstream),
        shadowed=tuple(sorted(shadowed)),
    )


def _ip_key(ip: str) -> tuple[int, ...]:
    return tuple(int(part) for part in ip.split("."))
