"""A project's external addresses and NAT as Kube-OVN objects (owner ``nat``), with Kube-OVN's
OVN-native NAT kinds (``OvnEip``, ``OvnSnatRule``, ``OvnFip``, ``OvnDnatRule``), as Kube-DC
uses them. Names (``N`` the backing namespace; the Kubernetes bridge reports the same ones as
``ovnEIpRef`` and ``ovnFip``):

* ``OvnEip`` ``N-eip-<name>``: a user EIP; ``N-fip-<name>``: a FIP's own EIP;
  ``N-slb-<name>``: a LoadBalancer service's own EIP (all type ``nat``). The default gateway's
  ``lrp`` OvnEip ``N-ext-<network>`` is the router's external port and belongs to the VPC
  slice (:func:`vpcbus_kubeovn.vpc.gateway_eip`);
* ``OvnSnatRule`` ``N``: the whole project subnet to the default gateway EIP;
* ``OvnFip`` ``N-fip-<name>``: 1:1 NAT of an EIP to one address of the subnet;
* ``OvnDnatRule`` ``N-svc-<service>-<protocol>-<port>``: one per LoadBalancer port.

LoadBalancer services become ``OvnDnatRule`` objects, one per port, because that is what the
NAT service's OVN backend (:mod:`vpcbus_nat.desired`) programs: an OVN ``Load_Balancer`` on
the project router with VIP ``EIP:port``, and Kube-OVN realises each ``OvnDnatRule`` as
exactly such a load balancer on the VPC router. Kube-OVN's other candidates do not fit: a
``SwitchLBRule`` is a VIP inside the VPC (not on an EIP), and the ``Iptables*`` kinds need a
NAT-gateway pod. The limit: an ``OvnDnatRule`` has one backend, so a service with several
endpoints is rendered to its lowest endpoint address (the OVN backend spreads over all).

Two entry points: :func:`manifests` renders members as a user wrote them (``vpcbus render``;
addresses known only when passed in ``addresses``, OvnEip name -> IPv4), and
:func:`from_facts` what the NAT service applies, from IPAM's resolved facts: only EIPs with
an address (each pinned in ``spec.v4Ip``: an OvnEip without one would take an address from
Kube-OVN's IPAM that vpcbus' IPAM may hand to someone else), only ready FIPs and ready ports,
targets as ``vpc`` + ``v4Ip`` (the address IPAM resolved, also for a VM's interface).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from vpcbus_kubeovn import meta
from vpcbus_kubeovn.meta import Manifest, apply_sorted, kubeovn, labels
from vpcbus_kubeovn.vpc import gateway_eip_name, subnet_name, vpc_name
from vpcbus_proto import names
from vpcbus_proto.members import DEFAULT_INTERFACE, EipSpec, FipSpec, LbServiceSpec
from vpcbus_proto.projects import ProjectSpec
from vpcbus_proto.status import AddressFacts, PortState

OWNER = "nat"
#: IPAM's name for the project's default gateway EIP.
GATEWAY_EIP = "default-gw"


def eip_name(namespace: str, eip: str) -> str:
    """``<ns>-eip-<name>``: a user EIP's OvnEip."""
    return f"{namespace}-eip-{eip}"


def fip_name(namespace: str, fip: str) -> str:
    """``<ns>-fip-<name>``: a FIP's OvnFip, and its own OvnEip when it has no user EIP."""
    return f"{namespace}-fip-{fip}"


def service_eip_name(namespace: str, service: str) -> str:
    """``<ns>-slb-<name>``: the own OvnEip of a LoadBalancer service bound to no EIP."""
    return f"{namespace}-slb-{service}"


def dnat_name(namespace: str, service: str, protocol: str, port: int) -> str:
    """``<ns>-svc-<service>-<tcp|udp>-<port>``: one LoadBalancer port's OvnDnatRule."""
    return f"{namespace}-svc-{service}-{protocol.lower()}-{port}"


def ovn_eip(spec: ProjectSpec, name: str, network: str, *, v4_ip: str | None = None) -> Manifest:
    """One type ``nat`` ``OvnEip`` of this slice."""
    return meta.ovn_eip(spec, name, network, OWNER, v4_ip=v4_ip)


def snat(spec: ProjectSpec) -> Manifest:
    """``OvnSnatRule`` ``N``: subnet ``N-default`` leaves from the default gateway EIP."""
    body = {
        "ovnEip": gateway_eip_name(spec.namespace, spec.egress_network_type),
        "vpcSubnet": subnet_name(spec),
    }
    return kubeovn("OvnSnatRule", spec.namespace, labels(spec.organization, spec.name, OWNER), body)


def _network(spec: ProjectSpec, network: str | None) -> str:
    """An EIP's external network: the one asked for, else the project's egress network (the
    platform default is not known here)."""
    return network or spec.egress_network_type


def user_eip(
    spec: ProjectSpec, eip: EipSpec, *, addresses: Mapping[str, str] | None = None
) -> Manifest:
    """A user EIP's ``OvnEip`` ``N-eip-<name>``."""
    name = eip_name(spec.namespace, eip.name)
    net = _network(spec, eip.external_network_type)
    return ovn_eip(spec, name, net, v4_ip=(addresses or {}).get(name))


def fip(
    spec: ProjectSpec, f: FipSpec, *, addresses: Mapping[str, str] | None = None
) -> list[Manifest]:
    """A FIP's ``OvnFip`` ``N-fip-<name>``, preceded by its own ``OvnEip`` of the same name
    unless it uses a user EIP. The target is ``v4Ip`` in VPC ``N``, or for a VM interface the
    Kube-OVN ``IP`` object of its NIC (``ipName``, named as Kube-OVN names the port)."""
    ns = spec.namespace
    out = []
    if f.eip is not None:
        eip_ref = eip_name(ns, f.eip)
    else:
        eip_ref = fip_name(ns, f.name)
        net = _network(spec, f.external_network_type)
        out.append(ovn_eip(spec, eip_ref, net, v4_ip=(addresses or {}).get(eip_ref)))
    if f.vm_target is not None:
        iface = f.vm_target.interface_name or DEFAULT_INTERFACE
        target = {"ipName": names.workload_port(ns, f.vm_target.vm_name, iface)}
    else:
        assert f.ip_address is not None  # FipSpec: one of the two
        target = {"vpc": vpc_name(spec), "v4Ip": f.ip_address}
    out.append(fip_rule(spec, f.name, eip_ref, target))
    return out


def fip_rule(spec: ProjectSpec, name: str, eip_ref: str, target: dict[str, str]) -> Manifest:
    """``OvnFip`` ``N-fip-<name>``: OvnEip ``eip_ref`` 1:1 to ``target`` (``ipName``, or
    ``vpc`` + ``v4Ip``)."""
    body = {"ovnEip": eip_ref, **target}
    owner = labels(spec.organization, spec.name, OWNER)
    return kubeovn("OvnFip", fip_name(spec.namespace, name), owner, body)


def service_eip_ref(spec: ProjectSpec, svc: LbServiceSpec) -> str:
    """The OvnEip a LoadBalancer service is reachable on."""
    if svc.bind_on_default_gw_eip:
        return gateway_eip_name(spec.namespace, spec.egress_network_type)
    if svc.bind_on_eip is not None:
        return eip_name(spec.namespace, svc.bind_on_eip)
    return service_eip_name(spec.namespace, svc.name)


def service(
    spec: ProjectSpec, svc: LbServiceSpec, *, addresses: Mapping[str, str] | None = None
) -> list[Manifest]:
    """A LoadBalancer service: its own ``OvnEip`` when bound to none, then one
    ``OvnDnatRule`` per port to its backend (the VM's NIC, or the lowest endpoint); none
    when it has no backend (nothing to reach), as in the OVN backend."""
    ns = spec.namespace
    ref = service_eip_ref(spec, svc)
    out = []
    if not (svc.bind_on_default_gw_eip or svc.bind_on_eip):
        net = _network(spec, svc.external_network_type)
        out.append(ovn_eip(spec, ref, net, v4_ip=(addresses or {}).get(ref)))
    target: dict[str, str]
    if svc.vm_selector is not None:
        target = {"ipName": names.workload_port(ns, svc.vm_selector, DEFAULT_INTERFACE)}
    elif svc.endpoints:
        target = {"vpc": vpc_name(spec), "v4Ip": _lowest(svc.endpoints)}
    else:
        return out
    ports = [(p.protocol, p.port, p.target_port) for p in svc.ports]
    return out + dnat_rules(spec, svc.name, ref, ports, target)


def dnat_rules(
    spec: ProjectSpec,
    service_name: str,
    eip_ref: str,
    ports: Sequence[tuple[str, int, int]],
    target: dict[str, str],
) -> list[Manifest]:
    """One ``OvnDnatRule`` per ``(protocol, port, target port)``, ordered by protocol and port:
    OvnEip ``eip_ref``'s port to ``target``'s (``ipName``, or ``vpc`` + ``v4Ip``)."""
    out = []
    owner = labels(spec.organization, spec.name, OWNER)
    for protocol, port, target_port in sorted(ports):
        body = {
            "ovnEip": eip_ref,
            "protocol": protocol.lower(),
            "externalPort": str(port),
            "internalPort": str(target_port),
            **target,
        }
        name = dnat_name(spec.namespace, service_name, protocol, port)
        out.append(kubeovn("OvnDnatRule", name, owner, body))
    return out


def _lowest(addresses: Sequence[str]) -> str:
    return min(addresses, key=lambda e: tuple(int(o) for o in e.split(".")))


def manifests(
    spec: ProjectSpec,
    *,
    eips: Sequence[EipSpec] = (),
    fips: Sequence[FipSpec] = (),
    services: Sequence[LbServiceSpec] = (),
    addresses: Mapping[str, str] | None = None,
) -> list[Manifest]:
    """The NAT slice of members as written: OvnEips, then the SNAT, FIP and DNAT rules that
    use them (the gateway's OvnEip is the VPC slice's)."""
    out = [user_eip(spec, e, addresses=addresses) for e in sorted(eips, key=lambda e: e.name)]
    out.append(snat(spec))
    for f in sorted(fips, key=lambda f: f.name):
        out += fip(spec, f, addresses=addresses)
    for s in sorted(services, key=lambda s: s.name):
        out += service(spec, s, addresses=addresses)
    return apply_sorted(out)


def ovn_eip_names(spec: ProjectSpec, facts: AddressFacts) -> dict[str, str]:
    """IPAM's EIP name -> the OvnEip behind it: ``default-gw`` -> ``N-ext-<network>``, a
    FIP's own EIP -> ``N-fip-<fip>``, a service's own -> ``N-slb-<service>`` (recognised by
    the names IPAM gives them, :func:`vpcbus_proto.names.fip_eip_name`), any other (a user
    EIP) -> ``N-eip-<name>``."""
    ns, key = spec.namespace, spec.key
    out = {e.name: eip_name(ns, e.name) for e in facts.eips}
    out[GATEWAY_EIP] = gateway_eip_name(ns, spec.egress_network_type)
    for f in facts.fips:
        if f.eip == names.fip_eip_name(key, f.name):
            out[f.eip] = fip_name(ns, f.name)
    for s in facts.services:
        if s.eip == names.service_eip_name(key, s.name):
            out[s.eip] = service_eip_name(ns, s.name)
    return out


def from_facts(spec: ProjectSpec, facts: AddressFacts) -> list[Manifest]:
    """The NAT slice the NAT service applies, from IPAM's facts about the project: an OvnEip
    for each EIP IPAM gave an address (but ``default-gw``, the VPC's), the SNAT rule, an
    OvnFip per ready FIP and an OvnDnatRule per ready port of a ready service that has
    endpoints. In apply order."""
    refs = ovn_eip_names(spec, facts)
    out = [
        ovn_eip(spec, refs[e.name], e.network, v4_ip=e.ip_address)
        for e in sorted(facts.eips, key=lambda e: e.name)
        if e.name != GATEWAY_EIP and e.ip_address
    ]
    out.append(snat(spec))
    vpc = vpc_name(spec)
    for f in sorted(facts.fips, key=lambda f: f.name):
        if f.ready and f.external_ip and f.target_ip and f.eip in refs:
            out.append(fip_rule(spec, f.name, refs[f.eip], {"vpc": vpc, "v4Ip": f.target_ip}))
    for s in sorted(facts.services, key=lambda s: s.name):
        ports = [_port(p) for p in s.ports if p.ready]
        if s.ready and s.ingress_ip and s.endpoints and ports and s.eip in refs:
            target = {"vpc": vpc, "v4Ip": _lowest(s.endpoints)}
            out += dnat_rules(spec, s.name, refs[s.eip], ports, target)
    return apply_sorted(out)


def _port(p: PortState) -> tuple[str, int, int]:
    return (p.protocol, p.port, p.target_port)
