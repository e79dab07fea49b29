"""A whole project as Kube-OVN (and core/v1) manifests: the three slices together."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from vpcbus_kubeovn import dns, nat, vpc
from vpcbus_kubeovn.meta import Manifest, apply_sorted
from vpcbus_proto.members import EipSpec, FipSpec, LbServiceSpec
from vpcbus_proto.projects import ProjectSpec


def manifests(
    spec: ProjectSpec,
    *,
    gateway_ip: str | None = None,
    eips: Sequence[EipSpec] = (),
    fips: Sequence[FipSpec] = (),
    services: Sequence[LbServiceSpec] = (),
    exclude_ips: Sequence[str] = (),
    addresses: Mapping[str, str] | None = None,
) -> list[Manifest]:
    """Every object of project ``spec`` in apply order (:data:`~vpcbus_kubeovn.meta.APPLY_ORDER`).

    ``gateway_ip`` is the egress network's gateway (the VPC's default route; none without
    it), ``exclude_ips`` addresses or ``a..b`` ranges the subnet must not hand out,
    ``addresses`` the known EIP addresses by OvnEip name. Members of another project are a
    ``ValueError``; so are bad ``gateway_ip``/``exclude_ips`` values.
    """
    members: list[EipSpec | FipSpec | LbServiceSpec] = [*eips, *fips, *services]
    for m in members:
        if (m.organization, m.project) != (spec.organization, spec.name):
            raise ValueError(f"{m.member} belongs to {m.project_key}, not to {spec.key}")
    gw_eip = (addresses or {}).get(vpc.gateway_eip_name(spec.namespace, spec.egress_network_type))
    out = vpc.manifests(spec, gateway_ip=gateway_ip, gateway_eip_ip=gw_eip, exclude_ips=exclude_ips)
    out += nat.manifests(spec, eips=eips, fips=fips, services=services, addresses=addresses)
    out += dns.manifests(spec, services=services, addresses=addresses)
    return apply_sorted(out)
