"""A project's DNS as Kubernetes objects (owner ``dns``): the Kube-OVN ``VpcDns`` ``N`` (a
CoreDNS for VPC ``N`` in subnet ``N-default``, as Kube-DC creates it) and, for each
LoadBalancer service whose address is known, Kube-DC's companion ``<svc>-ext``: a headless
core/v1 ``Service`` in namespace ``N`` with the service's ports, plus ``Endpoints`` of the
same name pointing at the EIP, so ``<svc>-ext.N.svc.cluster.local`` resolves to it (what the
DNS service's OVN backend serves, :func:`vpcbus_proto.names.service_ext_fqdn`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from vpcbus_kubeovn.meta import Manifest, is_service_name, kubeovn, labels
from vpcbus_kubeovn.nat import service_eip_ref
from vpcbus_kubeovn.vpc import subnet_name, vpc_name
from vpcbus_proto.members import LbServiceSpec
from vpcbus_proto.projects import ProjectSpec
from vpcbus_proto.status import AddressFacts

OWNER = "dns"


def vpc_dns(spec: ProjectSpec) -> Manifest:
    """``VpcDns`` ``N`` for VPC ``N`` and subnet ``N-default``."""
    body = {"vpc": vpc_name(spec), "subnet": subnet_name(spec)}
    return kubeovn("VpcDns", spec.namespace, labels(spec.organization, spec.name, OWNER), body)


def ext_name(service: str) -> str:
    """``<svc>-ext``; ``ValueError`` when that is no Service name (over 63 characters, or
    not starting with a letter), which Kubernetes would refuse."""
    name = f"{service}-ext"
    if not is_service_name(name):
        raise ValueError(f"service {service!r} has no valid -ext companion name ({name!r})")
    return name


def ext_service(spec: ProjectSpec, svc: LbServiceSpec, ingress_ip: str) -> list[Manifest]:
    """The headless ``<svc>-ext`` Service (no selector, ``clusterIP: None``) and its
    ``Endpoints`` at ``ingress_ip`` with the service's external ports."""
    return _ext_pair(spec, svc.name, [(p.port, p.protocol) for p in svc.ports], ingress_ip)


def _ext_pair(
    spec: ProjectSpec, service: str, ports: Sequence[tuple[int, str]], ingress_ip: str
) -> list[Manifest]:
    """``<service>-ext``'s Service and Endpoints with ``ports`` (port, protocol)."""
    name = ext_name(service)
    ordered = sorted(set(ports), key=lambda p: (p[1], p[0]))
    own = labels(spec.organization, spec.name, OWNER)
    meta = {"name": name, "namespace": spec.namespace, "labels": own}
    entries = [
        {"name": f"{protocol.lower()}-{port}", "port": port, "protocol": protocol}
        for port, protocol in ordered
    ]
    service_obj: Manifest = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {**meta, "labels": dict(own)},
        "spec": {"clusterIP": "None", "ports": [dict(e) for e in entries]},
    }
    endpoints: Manifest = {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {**meta, "labels": dict(own)},
        "subsets": [{"addresses": [{"ip": ingress_ip}], "ports": [dict(e) for e in entries]}],
    }
    return [service_obj, endpoints]


def published(facts: AddressFacts) -> list[tuple[str, str, list[tuple[int, str]]]]:
    """(service, ingress IP, ready ports) of every ready LoadBalancer service in IPAM's
    facts that has an ingress IP and a valid ``-ext`` name, by name: what gets a
    ``<svc>-ext`` (the OVN backend's ``service-ext`` names, on the same rule)."""
    out = []
    for svc in sorted(facts.services, key=lambda s: s.name):
        if not (svc.ready and svc.ingress_ip and is_service_name(f"{svc.name}-ext")):
            continue
        out.append((svc.name, svc.ingress_ip, [(p.port, p.protocol) for p in svc.ports if p.ready]))
    return out


def from_facts(spec: ProjectSpec, facts: AddressFacts) -> list[Manifest]:
    """The DNS service's slice from IPAM's status: ``VpcDns``, then the ``<svc>-ext``
    Services, then their Endpoints (apply order), for :func:`published` services."""
    pairs: list[Manifest] = []
    for service, ip, ports in published(facts):
        pairs += _ext_pair(spec, service, ports, ip)
    out = [vpc_dns(spec)]
    out += [m for m in pairs if m["kind"] == "Service"]
    out += [m for m in pairs if m["kind"] == "Endpoints"]
    return out


def manifests(
    spec: ProjectSpec,
    *,
    services: Sequence[LbServiceSpec] = (),
    addresses: Mapping[str, str] | None = None,
) -> list[Manifest]:
    """The DNS service's slice: ``VpcDns``, then a ``<svc>-ext`` pair per service whose EIP
    address is in ``addresses`` (OvnEip name -> IPv4); one not known yet has none."""
    out = [vpc_dns(spec)]
    pairs: list[Manifest] = []
    for svc in sorted(services, key=lambda s: s.name):
        ip = (addresses or {}).get(service_eip_ref(spec, svc))
        if ip:
            pairs += ext_service(spec, svc, ip)
    out += [m for m in pairs if m["kind"] == "Service"]
    out += [m for m in pairs if m["kind"] == "Endpoints"]
    return out
