"""A project's external addresses and NAT as Kube-OVN objects (owner ``nat``), with Kube-OVN's
OVN-native NAT kinds (``OvnEip``, ``OvnSnatRule``, ``OvnFip``, ``OvnDnatRule``), as Kube-DC
uses them. Names (``N`` the backing namespace; the Kubernetes bridge reports the same ones as
``ovnEIpRef`` and ``ovnFip``):

* ``OvnEip`` ``N-ext-<network>``: the default gateway EIP (``default-gw``), type ``lrp``: it
  is the VPC router's external port, which Kube-OVN also derives from the Vpc's
  ``extraExternalSubnets`` under this very name; declaring it lets us pin its address;
* ``OvnEip`` ``N-eip-<name>``: a user EIP; ``N-fip-<name>``: a FIP's own EIP;
  ``N-slb-<name>``: a LoadBalancer service's own EIP (all type ``nat``);
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

Addresses: an OvnEip without ``v4Ip`` gets one from Kube-OVN's IPAM. vpcbus' IPAM allocates
EIPs itself, so a caller that knows them passes ``addresses`` (OvnEip name -> IPv4) and each
known address is pinned in ``spec.v4Ip``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from vpcbus_kubeovn.meta import Manifest, apply_sorted, kubeovn, labels
from vpcbus_kubeovn.vpc import subnet_name, vpc_name
from vpcbus_proto import names
from vpcbus_proto.members import DEFAULT_INTERFACE, EipSpec, FipSpec, LbServiceSpec
from vpcbus_proto.projects import ProjectSpec

OWNER = "nat"


def gateway_eip_name(namespace: str, network: str) -> str:
    """``<ns>-ext-<network>``: the default gateway's OvnEip, as Kube-DC names it."""
    return f"{namespace}-ext-{network}"


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


def ovn_eip(
    spec: ProjectSpec, name: str, network: str, *, kind: str = "nat", v4_ip: str | None = None
) -> Manifest:
    """One ``OvnEip`` on external subnet ``ext-<network>`` (always explicit: Kube-OVN's
    webhook and controller resolve an empty one differently)."""
    body = {"externalSubnet": names.external_switch(network), "type": kind}
    if v4_ip:
        body["v4Ip"] = v4_ip
    return kubeovn("OvnEip", name, labels(spec.organization, spec.name, OWNER), body)


def gateway_eip(spec: ProjectSpec, *, v4_ip: str | None = None) -> Manifest:
    """The default gateway's ``OvnEip`` ``N-ext-<egressNetworkType>`` (type ``lrp``)."""
    name = gateway_eip_name(spec.namespace, spec.egress_network_type)
    return ovn_eip(spec, name, spec.egress_network_type, kind="lrp", v4_ip=v4_ip)


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
    body = {"ovnEip": eip_ref}
    if f.vm_target is not None:
        iface = f.vm_target.interface_name or DEFAULT_INTERFACE
        body["ipName"] = names.workload_port(ns, f.vm_target.vm_name, iface)
    else:
        assert f.ip_address is not None  # FipSpec: one of the two
        body |= {"vpc": vpc_name(spec), "v4Ip": f.ip_address}
    out.append(
        kubeovn("OvnFip", fip_name(ns, f.name), labels(spec.organization, spec.name, OWNER), body)
    )
    return out


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
        lowest = min(svc.endpoints, key=lambda e: tuple(int(o) for o in e.split(".")))
        target = {"vpc": vpc_name(spec), "v4Ip": lowest}
    else:
        return out
    for p in sorted(svc.ports, key=lambda p: (p.protocol, p.port)):
        body = {
            "ovnEip": ref,
            "protocol": p.protocol.lower(),
            "externalPort": str(p.port),
            "internalPort": str(p.target_port),
            **target,
        }
        name = dnat_name(ns, svc.name, p.protocol, p.port)
        out.append(kubeovn("OvnDnatRule", name, labels(spec.organization, spec.name, OWNER), body))
    return out


def manifests(
    spec: ProjectSpec,
    *,
    eips: Sequence[EipSpec] = (),
    fips: Sequence[FipSpec] = (),
    services: Sequence[LbServiceSpec] = (),
    addresses: Mapping[str, str] | None = None,
) -> list[Manifest]:
    """The NAT service's slice: OvnEips, then the SNAT, FIP and DNAT rules that use them."""
    ns = spec.namespace
    gw = gateway_eip_name(ns, spec.egress_network_type)
    out = [gateway_eip(spec, v4_ip=(addresses or {}).get(gw))]
    out += [user_eip(spec, e, addresses=addresses) for e in sorted(eips, key=lambda e: e.name)]
    out.append(snat(spec))
    for f in sorted(fips, key=lambda f: f.name):
        out += fip(spec, f, addresses=addresses)
    for s in sorted(services, key=lambda s: s.name):
        out += service(spec, s, addresses=addresses)
    return apply_sorted(out)
