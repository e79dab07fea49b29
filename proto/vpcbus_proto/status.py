"""Per-service, per-project status: what dashboards, the CLI and peer services read.

Each service publishes a :class:`ServiceStatus` on ``vpcbus.status.<service>.<org>.<project>``
after every reconcile whose outcome changed. The status stream keeps the last message per
subject, so the current state of anything is one direct get away. A project is Ready when
all four services report ``Ready`` for the same (its latest) generation.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from vpcbus_proto.subjects import SERVICES, ServiceName, status_subject

State = Literal["Ready", "Pending", "Error", "Deleted"]
Ownership = Literal["Released", "Shared", "Exclusive"]


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class ExternalAddress(_Model):
    """An EIP as IPAM reports it (Kube-DC ``EIp`` status)."""

    name: str = Field(description="EIP name, e.g. default-gw.")
    ip_address: str
    network: str = Field(description="External network (pool) name, e.g. cloud.")
    prefix_length: int = Field(ge=0, le=32, description="Prefix length of the pool.")
    gateway: str = Field(description="The external network's gateway.")
    ready: bool
    ownership_type: Ownership
    owners: list[str] = Field(default_factory=list)
    reason: str = Field(default="", description="Why it is not ready, e.g. NoAvailableIPs.")


class WorkloadAddress(_Model):
    """A VM or pod NIC's address in the project subnet (Kube-OVN ``IP``)."""

    member: str = Field(description="workload.<kind>.<name>.<interface>")
    kind: Literal["vm", "pod"]
    name: str
    interface: str
    ip_address: str
    mac_address: str
    static: bool = Field(default=False, description="The address was requested.")


class FloatingIp(_Model):
    """A FIP as IPAM resolves it (Kube-DC ``FIp`` status): NAT and DNS act on ready ones."""

    name: str
    eip: str = Field(description="The EIP it uses (its own `fip-<name>-xxxxx` or a user EIP).")
    external_ip: str = Field(default="", description="The EIP's address; empty until known.")
    target_ip: str = Field(default="", description="The resolved internal address.")
    vm_name: str = Field(default="", description="With vmTarget: the VM.")
    interface: str = Field(default="", description="With vmTarget: its interface.")
    mac_address: str = Field(default="", description="With vmTarget: the NIC's MAC.")
    ready: bool
    reason: str = Field(default="", description="Why it is not ready, e.g. TargetNotFound.")


class PortState(_Model):
    """One port of a LoadBalancer service on its EIP."""

    port: int
    target_port: int
    protocol: str
    ready: bool
    reason: str = Field(default="", description="Why not, e.g. PortInUse.")


class LoadBalancer(_Model):
    """A LoadBalancer service as IPAM resolves it: its EIP and ports; NAT programs the ready
    ports as an OVN load balancer on the project's router."""

    name: str
    eip: str = Field(description="default-gw, a user EIP, or its own `slb-<name>-xxxxx`.")
    ingress_ip: str = Field(default="", description="The EIP's address (status.loadBalancer).")
    endpoints: list[str] = Field(default_factory=list)
    ports: list[PortState] = Field(default_factory=list)
    ready: bool
    reason: str = ""


class Usage(_Model):
    """Accounting of one address space (a project subnet or an external pool)."""

    cidr: str
    capacity: int = Field(ge=0, description="Addresses that can ever be handed out.")
    in_use: int = Field(ge=0)
    quarantined: int = Field(ge=0, description="Released, not yet reusable.")
    available: int = Field(ge=0)
    in_use_ranges: list[str] = Field(default_factory=list, description="e.g. 10.0.0.2-10.0.0.9")
    available_ranges: list[str] = Field(default_factory=list)


class PoolUsage(_Model):
    """``vpcbus.usage.pool.<pool>``: an external pool's accounting, published by IPAM."""

    pool: str
    gateway: str
    exclude: list[str] = Field(default_factory=list)
    usage: Usage
    observed_at: datetime


class MemberStatus(_Model):
    """One member's (NIC's, EIP's) state inside a project status."""

    member: str = Field(description="workload.<kind>.<name>.<interface> or eip.<name>")
    generation: int = Field(ge=0, description="The member generation this state is for.")
    state: State
    reason: str
    message: str = ""


class ExternalNetwork(_Model):
    """An external network (an IPAM pool) as the platform configures it."""

    name: str
    cidr: str
    gateway: str


class AddressFacts(_Model):
    """IPAM's facts about a project: the admitted spec and its addresses."""

    cidr_block: str
    egress_network_type: str
    gateway_ip: str = Field(description="Router address inside the project subnet.")
    eips: list[ExternalAddress] = Field(default_factory=list)
    workloads: list[WorkloadAddress] = Field(default_factory=list)
    fips: list[FloatingIp] = Field(default_factory=list)
    services: list[LoadBalancer] = Field(default_factory=list)
    external_networks: list[ExternalNetwork] = Field(
        default_factory=list, description="The platform's external networks (for isolation)."
    )
    subnet: Usage | None = Field(default=None, description="Accounting of cidrBlock.")

    def eip(self, name: str) -> ExternalAddress | None:
        return next((e for e in self.eips if e.name == name), None)

    def fip(self, name: str) -> FloatingIp | None:
        return next((f for f in self.fips if f.name == name), None)

    def service(self, name: str) -> LoadBalancer | None:
        return next((s for s in self.services if s.name == name), None)


class Resolver(_Model):
    """How a workload of the project resolves names (DNS only): what its resolv.conf says.

    OVN answers the zone's names from the chassis whatever the query's destination, so the
    nameservers are the platform's upstream resolvers (names outside the zone go there through
    the project's SNAT); without an upstream, the project's router address, which answers the
    zone only."""

    zone: str = Field(description="The project zone, `<namespace>.svc.cluster.local`.")
    nameservers: list[str] = Field(description="IPv4 addresses, in order.")
    search: list[str] = Field(description="Search domains, as Kubernetes sets them for pods.")
    options: list[str] = Field(default_factory=list, description="resolv.conf options.")


class ServiceStatus(_Model):
    """One service's condition for one project."""

    service: ServiceName
    organization: str
    project: str
    namespace: str
    generation: int = Field(ge=0, description="The project generation this status is for.")
    state: State
    reason: str = Field(description="CamelCase reason, e.g. Reconciled, WaitingForIpam.")
    message: str = ""
    observed_at: datetime
    addresses: AddressFacts | None = Field(default=None, description="IPAM only.")
    objects: list[str] = Field(
        default_factory=list, description="Backend objects the service owns for the project."
    )
    members: list[MemberStatus] = Field(
        default_factory=list, description="Per NIC / EIP state, for services that handle them."
    )
    resolver: Resolver | None = Field(default=None, description="DNS only.")

    def member(self, key: str) -> MemberStatus | None:
        return next((m for m in self.members if m.member == key), None)


def project_ready(statuses: dict[str, ServiceStatus]) -> bool:
    """All four services Ready for one and the same generation."""
    if set(statuses) != set(SERVICES):
        return False
    generations = {s.generation for s in statuses.values()}
    return len(generations) == 1 and all(s.state == "Ready" for s in statuses.values())


def project_deleted(statuses: dict[str, ServiceStatus]) -> bool:
    """Every service that ever reported on the project has torn it down."""
    return all(s.state == "Deleted" for s in statuses.values())


def parse_status(subject: str, data: bytes) -> ServiceStatus | None:
    """The status a message on ``subject`` carries; None when it carries none: not JSON, not
    a ``ServiceStatus``, or one that names another service or project than its subject (a
    status is believed only on its own subject). Every reader of statuses uses this, so a
    malformed or misplaced message on a status subject is ignored, never fatal."""
    try:
        status = ServiceStatus.model_validate_json(data)
    except ValidationError:
        return None
    if status_subject(status.service, status.organization, status.project) != subject:
        return None
    return status
