"""The watched kinds and what the mapping reads of their objects. Pure.

A *snapshot* is every watched object as the bridge last saw it, slimmed to the fields the
mapping reads (:func:`slim`), keyed by kind and ``(namespace, name)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from vpcbus_proto import names

Obj = dict[str, Any]


@dataclass(frozen=True)
class Watched:
    """A kind the bridge watches; ``short`` names it in KV keys and logs."""

    api_version: str
    kind: str
    short: str


PROJECT: Final = Watched("kube-dc.com/v1", "Project", "project")
EIP: Final = Watched("kube-dc.com/v1", "EIp", "eip")
FIP: Final = Watched("kube-dc.com/v1", "FIp", "fip")
SERVICE: Final = Watched("v1", "Service", "service")
POD: Final = Watched("v1", "Pod", "pod")
VMI: Final = Watched("kubevirt.io/v1", "VirtualMachineInstance", "vmi")
WATCHED: Final = (PROJECT, EIP, FIP, SERVICE, POD, VMI)

#: short -> (namespace, name) -> object, as the bridge last saw them.
Snapshot = Mapping[str, Mapping[tuple[str, str], Obj]]

EGRESS_ALLOWLIST: Final = "network.kube-dc.com/egress-allowlist"
LB_NETWORK_TYPE: Final = "network.kube-dc.com/external-network-type"
BIND_DEFAULT_GW: Final = "service.nlb.kube-dc.com/bind-on-default-gw-eip"
BIND_EIP: Final = "service.nlb.kube-dc.com/bind-on-eip"
POD_MAC: Final = "ovn.kubernetes.io/mac_address"
VM_SELECTOR: Final = "vm.kubevirt.io/name"
GATEWAY_EIP: Final = "default-gw"
#: The bridge's finalizer on the Projects, EIps and FIps it bridges: their deletion waits
#: until every service has torn down what they describe (:mod:`.teardown`).
FINALIZER: Final = "network.vpcbus.io/teardown"
#: Labels of the EIp objects the bridge writes for the EIPs IPAM allocates on its own
#: (:mod:`.autoeips`); ``OWNER_LABEL: bridge`` marks them, so they are never bridged back.
MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
OWNER_LABEL: Final = "vpcbus.io/owner"
PROJECT_LABEL: Final = "vpcbus.io/project"
BRIDGE_OWNER: Final = "bridge"
#: Annotations the mapping reads; the others are not kept (see :func:`slim`).
_KEPT_ANNOTATIONS = ("network.kube-dc.com/", "service.nlb.kube-dc.com/", "ovn.kubernetes.io/")


def revision(obj: Obj) -> int:
    """The object's resourceVersion as a number (0 when it is not one)."""
    rv = str((obj.get("metadata") or {}).get("resourceVersion") or "0")
    return int(rv) if rv.isdigit() else 0


def slim(watched: Watched, obj: Obj) -> Obj:
    """The part of an object the mapping reads (what the bridge keeps and stores)."""
    head = meta(obj)
    kept = {
        k: head[k]
        for k in (
            "name",
            "namespace",
            "uid",
            "resourceVersion",
            "generation",
            "labels",
            "deletionTimestamp",
            "finalizers",
        )
        if k in head
    }
    notes = {
        k: v for k, v in (head.get("annotations") or {}).items() if k.startswith(_KEPT_ANNOTATIONS)
    }
    out: Obj = {"metadata": {**kept, **({"annotations": notes} if notes else {})}}
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if watched is POD:
        out["spec"] = {"hostNetwork": bool(spec.get("hostNetwork"))}
        out["status"] = {k: status[k] for k in ("phase", "podIP") if k in status}
    elif watched is VMI:
        devices = ((spec.get("domain") or {}).get("devices") or {}).get("interfaces") or []
        out["spec"] = {"interfaces": [i.get("name") for i in devices]}
        out["status"] = {k: status[k] for k in ("phase", "interfaces") if k in status}
    else:
        out["spec"], out["status"] = spec, status
    return out


def meta(obj: Obj) -> Obj:
    found: Obj = obj.get("metadata") or {}
    return found


def alive(obj: Obj) -> bool:
    """Not being deleted: a deletionTimestamp means the object is on its way out."""
    return not meta(obj).get("deletionTimestamp")


def finalizers(obj: Obj) -> list[str]:
    return list(meta(obj).get("finalizers") or [])


def written_by_bridge(obj: Obj) -> bool:
    """An EIp the bridge wrote itself (an EIP IPAM allocated on its own): never an input."""
    return (meta(obj).get("labels") or {}).get(OWNER_LABEL) == BRIDGE_OWNER


def running(obj: Obj) -> bool:
    """A pod or VMI in phase Running and not being deleted."""
    return (obj.get("status") or {}).get("phase") == "Running" and alive(obj)


def interface_label(name: str) -> str:
    """A KubeVirt interface name as a DNS label (``vpc_net_0`` -> ``vpc-net-0``)."""
    return name.lower().replace("_", "-")


def member_key(org: str, project: str, member: str) -> str:
    """The bridge's key of a member: ``member.<org>.<project>.<member key>``."""
    return f"member.{org}.{project}.{member}"


def project_key(org: str, name: str) -> str:
    """The bridge's key of a project: ``project.<org>.<name>``."""
    return f"project.{org}.{name}"


def projects_by_namespace(snapshot: Snapshot) -> dict[str, tuple[str, str]]:
    """Backing namespace -> (org, project) of every live Project with a valid identity."""
    out = {}
    for (org, name), obj in snapshot.get(PROJECT.short, {}).items():
        if alive(obj) and names.is_label(org) and names.is_label(name):
            out[names.namespace(org, name)] = (org, name)
    return out
