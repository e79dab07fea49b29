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
    name = ext_name(svc.name)
    ports = sorted(svc.ports, key=lambda p: (p.protocol, p.port))
    own = labels(spec.organization, spec.name, OWNER)
    meta = {"name": name, "namespace": spec.namespace, "labels": own}
    port_names = {(p.port, p.protocol): f"{p.protocol.lower()}-{p.port}" for p in ports}
    service: Manifest = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {**meta, "labels": dict(own)},
        "spec": {
            "clusterIP": "None",
            "ports": [
                {"name": port_names[p.port, p.protocol], "port": p.port, "protocol": p.protocol}
                for p in ports
            ],
        },
    }
    endpoints: Manifest = {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {**meta, "labels": dict(own)},
        "subsets": [
            {
                "addresses": [{"ip": ingress_ip}],
                "ports": [
                    {"name": port_names[p.port, p.protocol], "port": p.port, "protocol": p.protocol}
                    for p in ports
                ],
            }
        ],
    }
    return [service, endpoints]


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
