"""Things that live inside a project: workload NICs (VMs, pods), user EIPs, floating IPs and
LoadBalancer services.

A *member* belongs to exactly one project and has its own lifecycle events
(``workload.attached|detached``, ``eip.created|deleted``, ``fip.created|deleted``,
``service.created|updated|deleted``). Services record members next to their project and
reconcile the project as a whole, so a member event for a project that does not exist yet
simply waits for it.

A member is named in subjects, KV keys and statuses by its member key:
``workload.<kind>.<name>.<interface>``, ``eip.<name>``, ``fip.<name>`` or ``service.<name>``.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from vpcbus_proto import names
from vpcbus_proto.projects import ProjectRef, _Model

WorkloadKind = Literal["vm", "pod"]
MemberKind = Literal["workload", "eip", "fip", "service"]
Protocol = Literal["TCP", "UDP"]

#: Kube-DC VMs attach to the project network as interface ``default``.
DEFAULT_INTERFACE = "default"

_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


class _InProject(_Model):
    organization: names.Label = Field(description="Organization (DNS-1123 label).")
    project: names.Label = Field(description="Project name (DNS-1123 label).")

    @property
    def project_ref(self) -> ProjectRef:
        return ProjectRef(organization=self.organization, name=self.project)

    @property
    def project_key(self) -> str:
        return names.project_key(self.organization, self.project)


class WorkloadRef(_InProject):
    """One network interface of a VM or pod in a project."""

    kind: WorkloadKind = Field(description="vm or pod.")
    name: names.Label = Field(description="VM or pod name (DNS-1123 label).")
    interface: names.Label = Field(
        default=DEFAULT_INTERFACE, description="Interface (network) name; VMs use default."
    )

    @property
    def member(self) -> str:
        return workload_member(self.kind, self.name, self.interface)

    @property
    def holder(self) -> str:
        """Who holds the address, as IPAM and ``vpcbus get ip`` name it."""
        return f"{self.kind}/{self.name}/{self.interface}"


class WorkloadSpec(WorkloadRef):
    """``workload.attached``: the NIC and what it asks for."""

    ip: str | None = Field(
        default=None, description="Requested static address inside the project's cidrBlock."
    )
    mac: str | None = Field(
        default=None, description="Requested MAC (unicast, lower-case aa:bb:cc:dd:ee:ff)."
    )

    @field_validator("ip")
    @classmethod
    def _valid_ip(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(ipaddress.IPv4Address(value))
        except ValueError:
            raise ValueError(f"ip {value!r} is not an IPv4 address") from None

    @field_validator("mac")
    @classmethod
    def _valid_mac(cls, value: str | None) -> str | None:
        if value is None:
            return None
        mac = value.lower()
        if not _MAC.fullmatch(mac):
            raise ValueError(f"mac {value!r} is not a MAC address like 0a:58:0a:00:00:05")
        if int(mac[:2], 16) & 1:
            raise ValueError(f"mac {value!r} is a multicast address")
        if mac == "00:00:00:00:00:00":
            raise ValueError("mac 00:00:00:00:00:00 is not a usable address")
        return mac


class EipRef(_InProject):
    """A user EIP in a project (Kube-DC ``EIp``)."""

    name: names.Label = Field(description="EIP name (DNS-1123 label).")

    @property
    def member(self) -> str:
        return eip_member(self.name)


class EipSpec(EipRef):
    """``eip.created``: which external network to take the address from."""

    external_network_type: names.Label | None = Field(
        default=None, description="External network (pool); the platform default when omitted."
    )


class FipRef(_InProject):
    """A floating IP in a project (Kube-DC ``FIp``): 1:1 NAT of an external address to one
    internal address, all ports, both ways."""

    name: names.Label = Field(description="FIP name (DNS-1123 label).")

    @property
    def member(self) -> str:
        return fip_member(self.name)


class VmTarget(_Model):
    """A VM's interface as a FIP target (Kube-DC ``spec.vmTarget``)."""

    vm_name: names.Label = Field(description="VM name in the same project.")
    interface_name: names.Label | None = Field(
        default=None, description=f"Interface; {DEFAULT_INTERFACE!r} when omitted."
    )

    @property
    def holder(self) -> str:
        """The NIC's address holder, as IPAM names it (``vm/<name>/<interface>``)."""
        return f"vm/{self.vm_name}/{self.interface_name or DEFAULT_INTERFACE}"


class FipSpec(FipRef):
    """``fip.created``: what to expose and on which external address.

    The target is ``ip_address`` (any address of the project subnet) or ``vm_target``; the
    external address is the existing user EIP ``eip`` (taken exclusively), or one IPAM
    allocates for the FIP on ``external_network_type`` (the platform default when neither is
    given), named ``fip-<name>-<5 chars>`` and released with the FIP. The rules and messages
    are Kube-DC's CRD validation rules.
    """

    ip_address: str | None = Field(default=None, description="Target address (IPv4).")
    vm_target: VmTarget | None = Field(default=None, description="Target VM interface.")
    eip: names.Label | None = Field(default=None, description="An existing EIP of the project.")
    external_network_type: names.Label | None = Field(
        default=None, description="External network of the FIP's own EIP."
    )

    @field_validator("ip_address")
    @classmethod
    def _valid_ip(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(ipaddress.IPv4Address(value))
        except ValueError:
            raise ValueError(f"ipAddress {value!r} is not an IPv4 address") from None

    @model_validator(mode="after")
    def _one_target_one_source(self) -> FipSpec:
        if self.ip_address is not None and self.vm_target is not None:
            raise ValueError("ipAddress and vmTarget cannot be set at the same time")
        if self.ip_address is None and self.vm_target is None:
            raise ValueError("either ipAddress or vmTarget must be specified")
        if self.eip is not None and self.external_network_type is not None:
            raise ValueError("eip and externalNetworkType cannot be set at the same time")
        return self


class LbServiceRef(_InProject):
    """A ``type: LoadBalancer`` service of a project."""

    name: names.Label = Field(description="Service name (DNS-1123 label).")

    @property
    def member(self) -> str:
        return service_member(self.name)


class ServicePort(_Model):
    """One port of a LoadBalancer service: ``port`` on the external address, ``target_port``
    on the endpoints."""

    port: int = Field(ge=1, le=65535, description="External port on the EIP.")
    target_port: int = Field(ge=1, le=65535, description="Port on the endpoints.")
    protocol: Protocol = Field(default="TCP")


class LbServiceSpec(LbServiceRef):
    """``service.created`` / ``service.updated``: a LoadBalancer service on an EIP.

    The EIP is the project's ``default-gw`` (``bind_on_default_gw_eip``, Kube-DC's annotation
    ``service.nlb.kube-dc.com/bind-on-default-gw-eip``), a named EIP (``bind_on_eip``), or one
    IPAM allocates for the service on ``external_network_type`` (``slb-<name>-<5 chars>``,
    released with it). Several services may share an EIP on distinct ports.
    """

    ports: list[ServicePort] = Field(min_length=1, description="At least one port.")
    endpoints: list[str] = Field(
        default_factory=list, description="Backend addresses (IPv4) in the project subnet."
    )
    vm_selector: names.Label | None = Field(
        default=None, description="Or: the VM whose default interface is the backend."
    )
    bind_on_default_gw_eip: bool = Field(default=False)
    bind_on_eip: names.Label | None = Field(default=None)
    external_network_type: names.Label | None = Field(
        default=None, description="Network of the service's own EIP (no binding given)."
    )

    @field_validator("endpoints")
    @classmethod
    def _valid_endpoints(cls, value: list[str]) -> list[str]:
        out = []
        for item in value:
            try:
                out.append(str(ipaddress.IPv4Address(item)))
            except ValueError:
                raise ValueError(f"endpoint {item!r} is not an IPv4 address") from None
        if len(set(out)) != len(out):
            raise ValueError("endpoints must be distinct")
        return out

    @model_validator(mode="after")
    def _consistent(self) -> LbServiceSpec:
        seen = set()
        for p in self.ports:
            if (p.port, p.protocol) in seen:
                raise ValueError(f"port {p.port}/{p.protocol} is listed twice")
            seen.add((p.port, p.protocol))
        if self.endpoints and self.vm_selector is not None:
            raise ValueError("endpoints and vmSelector cannot be set at the same time")
        bindings = [self.bind_on_default_gw_eip, self.bind_on_eip is not None,
                    self.external_network_type is not None]  # fmt: skip
        if sum(bindings) > 1:
            raise ValueError(
                "bindOnDefaultGwEip, bindOnEip and externalNetworkType are mutually exclusive"
            )
        return self


def service_member(name: str) -> str:
    return f"service.{name}"


def fip_member(name: str) -> str:
    return f"fip.{name}"


def workload_member(kind: str, name: str, interface: str) -> str:
    return f"workload.{kind}.{name}.{interface}"


def eip_member(name: str) -> str:
    return f"eip.{name}"


def parse_member(member: str) -> tuple[MemberKind, tuple[str, ...]]:
    """``workload.vm.a.default`` -> ("workload", ("vm", "a", "default")); ValueError else."""
    parts = tuple(member.split("."))
    kinds = ("vm", "pod")
    if len(parts) == 4 and parts[0] == "workload" and parts[1] in kinds and _labels(parts[2:]):
        return "workload", parts[1:]
    if parts[0] == "eip" and len(parts) == 2 and names.is_label(parts[1]):
        return "eip", parts[1:]
    if parts[0] == "fip" and len(parts) == 2 and names.is_label(parts[1]):
        return "fip", parts[1:]
    if parts[0] == "service" and len(parts) == 2 and names.is_label(parts[1]):
        return "service", parts[1:]
    raise ValueError(f"not a member key: {member!r}")


def _labels(parts: tuple[str, ...]) -> bool:
    return all(names.is_label(p) for p in parts)
