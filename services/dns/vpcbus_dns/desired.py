"""A project's DNS zone as plain data. Pure.

Zone of a project with backing namespace ``N``: ``N.svc.cluster.local``, Kubernetes style.
Names in it:

* ``gateway.N.svc.cluster.local``: the VPC router;
* ``<name>.N.svc.cluster.local`` (:func:`vpcbus_proto.names.workload_fqdn`): every VM and pod
  by name, at the address IPAM gave its ``default`` interface (other interfaces have no name).
  A workload named ``gateway`` gets no record: the router's name is reserved.

Later issues add services (``<svc>``, ``<svc>-ext``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from vpcbus_proto import names
from vpcbus_proto.members import DEFAULT_INTERFACE
from vpcbus_proto.status import WorkloadAddress

CLUSTER_DOMAIN = "cluster.local"


def zone(namespace: str) -> str:
    return f"{namespace}.svc.{CLUSTER_DOMAIN}"


@dataclass(frozen=True)
class DesiredZone:
    key: str
    switch: str
    #: lower-case FQDN (no trailing dot) -> space-separated IPs, for the fixed names
    fixed: dict[str, str]
    #: the same, one per workload; a project may have thousands
    workloads: dict[str, str] = field(default_factory=dict)

    @property
    def records(self) -> dict[str, str]:
        """Every record of the zone's ``DNS`` row; a fixed name wins over a workload's."""
        return {**self.workloads, **self.fixed}

    def objects(self) -> list[str]:
        """The fixed names (the status counts workload names instead of listing them)."""
        return [f"DNS/{name}" for name in sorted(self.fixed)]


def workload_records(namespace: str, nics: Sequence[WorkloadAddress]) -> dict[str, str]:
    """``<name>.N.svc.cluster.local`` -> IP for every NIC on the default interface."""
    return {
        names.workload_fqdn(namespace, nic.name): nic.ip_address
        for nic in nics
        if nic.interface == DEFAULT_INTERFACE
    }


def build(
    key: str, namespace: str, gateway_ip: str, nics: Sequence[WorkloadAddress] = ()
) -> DesiredZone:
    fixed = {f"gateway.{zone(namespace)}": gateway_ip}
    workloads = {
        fqdn: ip for fqdn, ip in workload_records(namespace, nics).items() if fqdn not in fixed
    }
    return DesiredZone(key=key, switch=f"{namespace}-default", fixed=fixed, workloads=workloads)
