"""A project's DNS zone as plain data. Pure.

Zone of a project with backing namespace ``N``: ``N.svc.cluster.local``, Kubernetes style.
Names in it: ``gateway.N.svc.cluster.local`` (the VPC router); later issues add services
(``<svc>``, ``<svc>-ext``) and workloads (``<vm>``).
"""

from __future__ import annotations

from dataclasses import dataclass

CLUSTER_DOMAIN = "cluster.local"


def zone(namespace: str) -> str:
    return f"{namespace}.svc.{CLUSTER_DOMAIN}"


@dataclass(frozen=True)
class DesiredZone:
    key: str
    switch: str
    records: dict[str, str]  # lower-case FQDN (no trailing dot) -> space-separated IPs


def build(key: str, namespace: str, gateway_ip: str) -> DesiredZone:
    return DesiredZone(
        key=key,
        switch=f"{namespace}-default",
        records={f"gateway.{zone(namespace)}": gateway_ip},
    )
