"""Kube-DC objects -> the events that describe them (:func:`desired`). Pure.

One desired event per project and per member, keyed like the services key them: a Project
is ``project.created|updated``; in its backing namespace an EIp is ``eip.created``, a FIp
``fip.created``, a LoadBalancer Service ``service.created|updated``, a running pod or each
addressed interface of a running VMI ``workload.attached``. An object that maps to no valid
event is a :class:`Problem` (reported on its status), never a removal.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, ValidationError

from vpcbus_bridge.mapping import objects
from vpcbus_bridge.mapping.objects import (
    EIP,
    FIP,
    POD,
    PROJECT,
    SERVICE,
    VMI,
    Obj,
    Snapshot,
    Watched,
)
from vpcbus_proto import subjects
from vpcbus_proto.members import (
    EipSpec,
    FipSpec,
    LbServiceSpec,
    ServicePort,
    VmTarget,
    WorkloadSpec,
)
from vpcbus_proto.projects import ProjectSpec


@dataclass(frozen=True)
class Desired:
    """The event one project or member should be described by."""

    key: str
    family: subjects.EventFamily
    data: BaseModel
    uid: str
    revision: int


@dataclass(frozen=True)
class Problem:
    """An object that maps to no valid event: its ``key`` stays as last published, so a bad
    edit never tears anything down."""

    short: str
    namespace: str
    name: str
    message: str
    key: str


#: Builds one event's data and the revision it is built from; may raise ValidationError.
Build = Callable[[], tuple[BaseModel, int]]
Member = tuple[str, subjects.EventFamily, Build]


def desired(snapshot: Snapshot) -> tuple[dict[str, Desired], list[Problem]]:
    """Every event the snapshot should be described by, and the objects that map to none.

    A member counts when its namespace is the backing namespace of a live Project; a
    Project or member that is being deleted (``deletionTimestamp``) counts as gone."""
    found: dict[str, Desired] = {}
    problems: list[Problem] = []
    owners = objects.projects_by_namespace(snapshot)
    for (org, name), obj in snapshot.get(PROJECT.short, {}).items():
        if (org, name) in owners.values():
            build = functools.partial(_project, obj, org)
            _collect(
                found, problems, PROJECT, obj, (objects.project_key(org, name), "project", build)
            )
    for watched in (EIP, FIP, SERVICE, POD, VMI):
        for (ns, _name), obj in snapshot.get(watched.short, {}).items():
            if ns in owners and objects.alive(obj):
                org, project = owners[ns]
                for member in _MEMBERS[watched.short](obj, org, project, snapshot):
                    _collect(found, problems, watched, obj, member)
    return found, problems


def _collect(
    found: dict[str, Desired], problems: list[Problem], watched: Watched, obj: Obj, member: Member
) -> None:
    key, family, build = member
    meta = objects.meta(obj)
    try:
        data, rev = build()
    except ValidationError as exc:
        text = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        problems.append(Problem(watched.short, meta["namespace"], meta["name"], text, key))
        return
    except ValueError as exc:
        problems.append(Problem(watched.short, meta["namespace"], meta["name"], str(exc), key))
        return
    found[key] = Desired(key, family, data, str(meta.get("uid", "")), rev)


def _project(obj: Obj, org: str) -> tuple[BaseModel, int]:
    spec = obj.get("spec") or {}
    allow = (objects.meta(obj).get("annotations") or {}).get(objects.EGRESS_ALLOWLIST)
    return ProjectSpec(
        organization=org,
        name=objects.meta(obj)["name"],
        cidr_block=spec.get("cidrBlock", ""),
        egress_network_type=spec.get("egressNetworkType", ""),
        gw_lan_ip=spec.get("gwLanIp") or None,
        egress_allowlist=[i.strip() for i in allow.split(",") if i.strip()] if allow else None,
    ), objects.revision(obj)


def _eips(obj: Obj, org: str, project: str, _snapshot: Snapshot) -> list[Member]:
    name, spec = objects.meta(obj)["name"], obj.get("spec") or {}
    if spec.get("childRef") or name == objects.GATEWAY_EIP or objects.written_by_bridge(obj):
        return []  # IPAM's own EIPs (the gateway's, FIPs', services'): the bridge reports them

    def build() -> tuple[BaseModel, int]:
        network = spec.get("externalNetworkType") or None
        eip = EipSpec(organization=org, project=project, name=name, external_network_type=network)
        return eip, objects.revision(obj)

    return [(objects.member_key(org, project, f"eip.{name}"), "eip", build)]


def _fips(obj: Obj, org: str, project: str, snapshot: Snapshot) -> list[Member]:
    name = objects.meta(obj)["name"]
    build = functools.partial(_fip, obj, org, project, snapshot)
    return [(objects.member_key(org, project, f"fip.{name}"), "fip", build)]


def _fip(obj: Obj, org: str, project: str, snapshot: Snapshot) -> tuple[BaseModel, int]:
    """A FIp; a vmTarget without interfaceName means the VM's first interface (Kube-DC)."""
    meta, spec = objects.meta(obj), obj.get("spec") or {}
    target, vm = spec.get("vmTarget"), None
    if isinstance(target, dict):
        iface = target.get("interfaceName")
        vmi = snapshot.get(VMI.short, {}).get((meta["namespace"], target.get("vmName", "")))
        if not iface and vmi is not None:
            iface = ((vmi.get("spec") or {}).get("interfaces") or [None])[0]
        label = objects.interface_label(iface) if iface else None
        vm = VmTarget(vm_name=target.get("vmName", ""), interface_name=label)
    return FipSpec(
        organization=org,
        project=project,
        name=meta["name"],
        ip_address=spec.get("ipAddress") or None,
        vm_target=vm,
        eip=spec.get("eip") or None,
        external_network_type=spec.get("externalNetworkType") or None,
    ), objects.revision(obj)


def is_load_balancer(service: Obj) -> bool:
    """A ``type: LoadBalancer`` Service without a ``loadBalancerClass`` (a class means
    another controller, e.g. MetalLB, serves it, as in Kube-DC)."""
    spec = service.get("spec") or {}
    return spec.get("type") == "LoadBalancer" and not spec.get("loadBalancerClass")


def _services(obj: Obj, org: str, project: str, snapshot: Snapshot) -> list[Member]:
    if not is_load_balancer(obj):
        return []
    key = objects.member_key(org, project, f"service.{objects.meta(obj)['name']}")
    return [(key, "service", functools.partial(_service, obj, org, project, snapshot))]


def _service(obj: Obj, org: str, project: str, snapshot: Snapshot) -> tuple[BaseModel, int]:
    """A LoadBalancer Service; its endpoints are the running pods its selector picks (their
    resourceVersions count), or the VM of a ``vm.kubevirt.io/name`` selector."""
    meta, spec = objects.meta(obj), obj.get("spec") or {}
    notes = meta.get("annotations") or {}
    ports = []
    for p in spec.get("ports") or []:
        target = p.get("targetPort", p.get("port"))
        if isinstance(target, str) and not target.isdigit():
            raise ValueError(
                f"port {p.get('port')}: a named targetPort ({target}) is not supported"
            )
        protocol = p.get("protocol") or "TCP"
        ports.append(ServicePort(port=p.get("port"), target_port=int(target), protocol=protocol))
    selector: dict[str, str] = spec.get("selector") or {}
    rev, endpoints, vm = objects.revision(obj), set(), None
    if set(selector) == {objects.VM_SELECTOR}:
        vm = selector[objects.VM_SELECTOR]
    elif selector:
        for (ns, _), pod in snapshot.get(POD.short, {}).items():
            labels, ip = (
                objects.meta(pod).get("labels") or {},
                (pod.get("status") or {}).get("podIP"),
            )
            picked = all(labels.get(k) == v for k, v in selector.items())
            if ns == meta["namespace"] and picked and objects.running(pod) and ip:
                endpoints.add(ip)
                rev = max(rev, objects.revision(pod))
    return LbServiceSpec(
        organization=org,
        project=project,
        name=meta["name"],
        ports=ports,
        endpoints=sorted(endpoints, key=ipaddress.ip_address),
        vm_selector=vm,
        bind_on_default_gw_eip=notes.get(objects.BIND_DEFAULT_GW) == "true",
        bind_on_eip=notes.get(objects.BIND_EIP) or None,
        external_network_type=notes.get(objects.LB_NETWORK_TYPE) or None,
    ), rev


def _pods(obj: Obj, org: str, project: str, _snapshot: Snapshot) -> list[Member]:
    meta, spec = objects.meta(obj), obj.get("spec") or {}
    ip = (obj.get("status") or {}).get("podIP")
    launcher = (meta.get("labels") or {}).get("kubevirt.io") == "virt-launcher"
    if spec.get("hostNetwork") or launcher or not ip or not objects.running(obj):
        return []  # not on the project network (yet), or a VM's launcher (the VMI counts)
    mac = (meta.get("annotations") or {}).get(objects.POD_MAC) or None
    build = functools.partial(_nic, obj, org, project, "pod", "default", ip, mac)
    key = objects.member_key(org, project, f"workload.pod.{meta['name']}.default")
    return [(key, "workload", build)]


def _vmis(obj: Obj, org: str, project: str, _snapshot: Snapshot) -> list[Member]:
    """One NIC per interface that reports an address (interface names as DNS labels)."""
    if not objects.running(obj):
        return []
    out: list[Member] = []
    name = objects.meta(obj)["name"]
    for iface in (obj.get("status") or {}).get("interfaces") or []:
        if iface.get("name") and iface.get("ipAddress"):
            label = objects.interface_label(iface["name"])
            mac = iface.get("mac") or None
            build = functools.partial(_nic, obj, org, project, "vm", label, iface["ipAddress"], mac)
            key = objects.member_key(org, project, f"workload.vm.{name}.{label}")
            out.append((key, "workload", build))
    return out


def _nic(
    obj: Obj, org: str, project: str, kind: str, interface: str, ip: str, mac: str | None
) -> tuple[BaseModel, int]:
    nic = WorkloadSpec(
        organization=org,
        project=project,
        kind=kind,
        name=objects.meta(obj)["name"],
        interface=interface,
        ip=ip,
        mac=mac,
    )
    return nic, objects.revision(obj)


_MEMBERS: dict[str, Callable[[Obj, str, str, Snapshot], list[Member]]] = {
    EIP.short: _eips,
    FIP.short: _fips,
    SERVICE.short: _services,
    POD.short: _pods,
    VMI.short: _vmis,
}
