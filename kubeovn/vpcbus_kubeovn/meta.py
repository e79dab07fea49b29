"""What every manifest shares: the API version, ownership labels, names and the order in
which kinds are applied and deleted. Pure.

Every object carries ``app.kubernetes.io/managed-by: vpcbus``, ``vpcbus.io/project:
<org>.<project>`` and ``vpcbus.io/owner: <service>`` so a service can list (and prune) exactly
its own slice of a project with one label selector, and apply it with its own field manager.
"""

from __future__ import annotations

import re
from typing import Any

from vpcbus_proto import names
from vpcbus_proto.projects import ProjectSpec

#: Group/version of every Kube-OVN kind we emit (all cluster-scoped).
KUBEOVN = "kubeovn.io/v1"
#: Group/version of Multus' ``NetworkAttachmentDefinition`` (namespaced).
NAD_API = "k8s.cni.cncf.io/v1"

MANAGED_BY = "app.kubernetes.io/managed-by"
PROJECT = "vpcbus.io/project"
OWNER = "vpcbus.io/owner"

#: Deletion order, by kind: the ``<svc>-ext`` aliases first; then the NAT rules, which hold
#: their OvnEip (Kube-OVN refuses to delete an OvnEip a rule uses); the OvnEips; VPC DNS (it
#: names the VPC and subnet); the workloads' attachment (NAD ``default``, Kube-DC deletes it
#: before the Subnet); the Subnet, which must go before its Vpc (the Vpc's finalizer
#: waits for ``status.subnets`` to empty). Kube-DC's order (reference: kube-dc-networking.md
#: section 2.4): FIPs, SNAT, OvnEip, Subnet, Vpc.
DELETION_ORDER: tuple[str, ...] = (
    "Endpoints",
    "Service",
    "OvnFip",
    "OvnDnatRule",
    "OvnSnatRule",
    "OvnEip",
    "VpcDns",
    "NetworkAttachmentDefinition",
    "Subnet",
    "Vpc",
)

#: Apply order: every object's references exist before it does, and the OvnEips come
#: first: Kube-OVN makes a Vpc's external port from the ``lrp`` OvnEip ``<vpc>-<external
#: subnet>`` when one exists and otherwise creates that OvnEip itself, with an address of its
#: own IPAM (and an OvnEip's spec cannot change once it is ready). Deletion is the reverse,
#: except that OvnEips go before the VPC DNS, Subnet and Vpc (they are held by NAT rules only).
APPLY_ORDER: tuple[str, ...] = (
    "OvnEip",
    "Vpc",
    "Subnet",
    "NetworkAttachmentDefinition",
    "VpcDns",
    "OvnSnatRule",
    "OvnDnatRule",
    "OvnFip",
    "Service",
    "Endpoints",
)

Manifest = dict[str, Any]

_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS1035 = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


def is_object_name(name: str) -> bool:
    """A DNS-1123 subdomain (at most 253 characters): what Kubernetes accepts as the name of
    a custom resource, Endpoints included."""
    return len(name) <= 253 and bool(_SUBDOMAIN.fullmatch(name))


def is_service_name(name: str) -> bool:
    """A DNS-1035 label: what Kubernetes accepts as a Service name."""
    return bool(_DNS1035.fullmatch(name))


def labels(organization: str, project: str, owner: str) -> dict[str, str]:
    """The ownership labels; ``<org>.<project>`` fits a label value (63 characters) because
    the backing namespace ``<org>-<project>`` does."""
    return {
        MANAGED_BY: "vpcbus",
        PROJECT: names.project_key(organization, project),
        OWNER: owner,
    }


def kubeovn(kind: str, name: str, owner_labels: dict[str, str], spec: dict[str, Any]) -> Manifest:
    """A cluster-scoped ``kubeovn.io/v1`` object."""
    return {
        "apiVersion": KUBEOVN,
        "kind": kind,
        "metadata": {"name": name, "labels": dict(owner_labels)},
        "spec": spec,
    }


def ovn_eip(
    spec: ProjectSpec,
    name: str,
    network: str,
    owner: str,
    *,
    kind: str = "nat",
    v4_ip: str | None = None,
) -> Manifest:
    """One ``OvnEip`` on external subnet ``ext-<network>``, ``externalSubnet`` always explicit
    (Kube-OVN's webhook and controller resolve an empty one differently) and ``v4Ip`` pinned
    when known (vpcbus' IPAM allocates EIPs; without it Kube-OVN's IPAM picks one)."""
    body = {"externalSubnet": names.external_switch(network), "type": kind}
    if v4_ip:
        body["v4Ip"] = v4_ip
    return kubeovn("OvnEip", name, labels(spec.organization, spec.name, owner), body)


def apply_sorted(manifests: list[Manifest]) -> list[Manifest]:
    """``manifests`` in :data:`APPLY_ORDER` (stable: same-kind objects keep their order)."""
    return sorted(manifests, key=lambda m: APPLY_ORDER.index(m["kind"]))


def deletion_sorted(manifests: list[Manifest]) -> list[Manifest]:
    """``manifests`` in :data:`DELETION_ORDER`, for tearing a project down."""
    return sorted(manifests, key=lambda m: DELETION_ORDER.index(m["kind"]))
