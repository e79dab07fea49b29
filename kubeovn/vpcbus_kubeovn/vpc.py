"""A project's VPC as Kube-OVN objects (owner ``vpc``): the router's external address
``OvnEip`` ``N-ext-<network>``, ``Vpc`` ``N``, ``Subnet`` ``N-default`` and the workloads'
attachment ``NetworkAttachmentDefinition`` ``default`` in namespace ``N`` (KubeVirt VMs use
``networkName: N/default``), ``N`` being the backing namespace ``<org>-<project>``.

The same network as the VPC service's OVN backend (:mod:`vpcbus_vpc.desired`): router ``N``
with a LAN port at the project gateway, an external port on ``ext-<network>`` and the default
route via the external network's gateway. Kube-OVN creates the external port for each of
``spec.extraExternalSubnets``, addressed by the ``lrp`` OvnEip ``<vpc>-<external subnet>``:
it uses that OvnEip when it exists and makes one from its own IPAM when not. So the OvnEip
is part of this slice and applied before the Vpc, pinned to the ``default-gw`` address
vpcbus' IPAM allocated (the address the project's SNAT leaves from, Kube-DC's
``<ns>-ext-<network>``); it is deleted with the VPC, after the NAT rules that use it.
Kube-OVN does not add that route itself ("automatic maintenance of public network routes is
currently not supported"), so it is a static route, as Kube-DC declares it.

Fields the Kube-OVN controller writes back (the Subnet's gateway, its ``excludeIps`` with
the gateway added, ``protocol``, ``provider``; the route's ``policy``) are pre-filled with
the values it would write, so re-applying this slice does not fight the controller.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence

from vpcbus_kubeovn.meta import NAD_API, Manifest, kubeovn, labels, ovn_eip
from vpcbus_proto import names
from vpcbus_proto.projects import ProjectSpec

OWNER = "vpc"
#: The name of the project's default attachment (Kube-DC: ``N/default``).
NAD_NAME = "default"
#: Where Kube-OVN's CNI daemon listens on every node (its documented default).
CNI_SOCKET = "/run/openvswitch/kube-ovn-daemon.sock"


def vpc_name(spec: ProjectSpec) -> str:
    """``N``: the Vpc (OVN router) is named after the backing namespace."""
    return spec.namespace


def subnet_name(spec: ProjectSpec) -> str:
    """``N-default``: the project's workload subnet."""
    return f"{spec.namespace}-default"


def external_subnet(spec: ProjectSpec) -> str:
    """``ext-<egressNetworkType>``: the Kube-OVN external subnet of the default gateway."""
    return names.external_switch(spec.egress_network_type)


def gateway_eip_name(namespace: str, network: str) -> str:
    """``<ns>-ext-<network>``: the default gateway's OvnEip, as Kube-DC and Kube-OVN name it
    (``<vpc>-<external subnet>`` with external subnet ``ext-<network>``)."""
    return f"{namespace}-ext-{network}"


def gateway_eip(spec: ProjectSpec, *, v4_ip: str | None = None) -> Manifest:
    """The router's external address: ``OvnEip`` ``N-ext-<egressNetworkType>``, type ``lrp``."""
    name = gateway_eip_name(spec.namespace, spec.egress_network_type)
    return ovn_eip(spec, name, spec.egress_network_type, OWNER, kind="lrp", v4_ip=v4_ip)


def vpc(spec: ProjectSpec, *, gateway_ip: str | None = None) -> Manifest:
    """``Vpc`` ``N`` for namespace ``N``, attached to the external subnet of its egress
    network; with ``gateway_ip`` (that network's gateway) the default route through it.
    Without it the VPC has no default route (the address is the platform's, not the
    project's: the caller knows it from the external pool)."""
    body: dict[str, object] = {
        "namespaces": [spec.namespace],
        "enableExternal": True,
        "extraExternalSubnets": [external_subnet(spec)],
    }
    if gateway_ip is not None:
        hop = _ipv4(gateway_ip, "gateway")
        body["staticRoutes"] = [{"cidr": "0.0.0.0/0", "nextHopIP": hop, "policy": "policyDst"}]
    return kubeovn("Vpc", vpc_name(spec), labels(spec.organization, spec.name, OWNER), body)


def exclude_ranges(spec: ProjectSpec, exclude_ips: Sequence[str] = ()) -> list[str]:
    """``excludeIps`` as Kube-OVN keeps them: the gateway plus the given addresses or
    ``a..b`` ranges, each inside the CIDR, sorted by start address, duplicates dropped.
    ``ValueError`` names the first bad item."""
    net = spec.network
    items: dict[str, tuple[int, int]] = {str(spec.gateway): (int(spec.gateway), 0)}
    for raw in exclude_ips:
        first, sep, last = raw.partition("..")
        start = _ipv4_in(first, net, raw)
        end = _ipv4_in(last, net, raw) if sep else start
        if int(end) < int(start):
            raise ValueError(f"exclude range {raw!r} ends before it starts")
        text = f"{start}..{end}" if sep and end != start else str(start)
        items.setdefault(text, (int(start), int(end)))
    return sorted(items, key=lambda k: items[k])


def subnet(spec: ProjectSpec, *, exclude_ips: Sequence[str] = ()) -> Manifest:
    """``Subnet`` ``N-default`` in VPC ``N``: the project CIDR, its gateway, overlay
    (provider ``ovn``), bound to namespace ``N``."""
    body = {
        "vpc": vpc_name(spec),
        "cidrBlock": spec.cidr_block,
        "gateway": str(spec.gateway),
        "excludeIps": exclude_ranges(spec, exclude_ips),
        "protocol": "IPv4",
        "provider": "ovn",
        "namespaces": [spec.namespace],
    }
    return kubeovn("Subnet", subnet_name(spec), labels(spec.organization, spec.name, OWNER), body)


def attachment(spec: ProjectSpec) -> Manifest:
    """``NetworkAttachmentDefinition`` ``default`` in ``N``: Kube-OVN's CNI with provider
    ``default.N.ovn`` (Kube-OVN's ``<nad>.<namespace>.ovn`` for an attachment it serves). No
    Subnet carries that provider, so Kube-OVN gives a workload on it an address of the
    namespace's subnet, ``N-default``: the same network as a pod's primary interface."""
    config = {
        "cniVersion": "0.3.1",
        "type": "kube-ovn",
        "server_socket": CNI_SOCKET,
        "provider": f"{NAD_NAME}.{spec.namespace}.ovn",
    }
    return {
        "apiVersion": NAD_API,
        "kind": "NetworkAttachmentDefinition",
        "metadata": {
            "name": NAD_NAME,
            "namespace": spec.namespace,
            "labels": labels(spec.organization, spec.name, OWNER),
        },
        "spec": {"config": json.dumps(config, separators=(",", ":"))},
    }


def manifests(
    spec: ProjectSpec,
    *,
    gateway_ip: str | None = None,
    gateway_eip_ip: str | None = None,
    exclude_ips: Sequence[str] = (),
) -> list[Manifest]:
    """The VPC service's slice, in apply order: ``gateway_ip`` is the external network's
    gateway (the default route), ``gateway_eip_ip`` the project's ``default-gw`` address."""
    return [
        gateway_eip(spec, v4_ip=gateway_eip_ip),
        vpc(spec, gateway_ip=gateway_ip),
        subnet(spec, exclude_ips=exclude_ips),
        attachment(spec),
    ]


def _ipv4(value: str, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ValueError(f"{what} {value!r} is not an IPv4 address") from None


def _ipv4_in(value: str, net: ipaddress.IPv4Network, raw: str) -> ipaddress.IPv4Address:
    try:
        ip = ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError(f"exclude {raw!r} is not an IPv4 address or range a..b") from None
    if ip not in net:
        raise ValueError(f"exclude {raw!r} is outside cidrBlock {net}")
    return ip
