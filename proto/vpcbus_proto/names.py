"""Names shared by every part of the system: project keys and backing namespaces.

Pure functions; used by :mod:`.projects`, the services' desired-state builders and the CLI.
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated

from pydantic import StringConstraints

#: A DNS-1123 label, as Kubernetes requires for organisation and project names.
LABEL_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
_LABEL = re.compile(LABEL_PATTERN)

Label = Annotated[str, StringConstraints(pattern=LABEL_PATTERN, max_length=63)]


def is_label(value: str) -> bool:
    """True when ``value`` is a DNS-1123 label (usable as a subject token and a KV key part).

    ``fullmatch``, not ``match``: in Python ``$`` also matches before a trailing newline, so
    ``match`` would accept ``"abc\\n"``, which pydantic's (Rust) regex rightly rejects and
    which must never reach a NATS subject.
    """
    return bool(_LABEL.fullmatch(value))


def namespace(organization: str, project: str) -> str:
    """The backing namespace of a project, ``<org>-<project>`` as in Kube-DC."""
    return f"{organization}-{project}"


#: Names of the external networks' shared switches (``ext-cloud``) and of their ports
#: (``ext-cloud-<namespace>``) start with this; a backing namespace may not, or a project's
#: LAN switch port ``<ns>-default-<ns>`` could take another project's external port name
#: (org ``ext``, project ``cloud-x`` against org ``x``, project ``default-ext-cloud-x``).
EXTERNAL_PREFIX = "ext-"


def external_switch(network: str) -> str:
    """The shared switch of an external network: ``ext-<network>``, as Kube-OVN names it."""
    return f"{EXTERNAL_PREFIX}{network}"


def reserved_namespace(namespace: str) -> bool:
    """A backing namespace that cannot be used: it would share names with the external
    networks' switch ports (see :data:`EXTERNAL_PREFIX`)."""
    return namespace.startswith(EXTERNAL_PREFIX)


def project_key(organization: str, project: str) -> str:
    """The key of a project in subjects and KV buckets: ``<org>.<project>``."""
    return f"{organization}.{project}"


def split_key(key: str) -> tuple[str, str]:
    """Inverse of :func:`project_key`; raises ``ValueError`` on anything else."""
    org, sep, name = key.partition(".")
    if not sep or not is_label(org) or not is_label(name):
        raise ValueError(f"not a project key: {key!r}")
    return org, name


def workload_port(namespace: str, name: str, interface: str = "default") -> str:
    """The logical switch port of a NIC, named as Kube-OVN names pod and VM ports:
    ``<name>.<namespace>``, plus ``.<interface>`` for any interface but ``default``."""
    port = f"{name}.{namespace}"
    return port if interface == "default" else f"{port}.{interface}"


def workload_fqdn(namespace: str, name: str, zone: str = "svc.cluster.local") -> str:
    """A VM's or pod's name in its project zone: ``<name>.<namespace>.svc.cluster.local``."""
    return f"{name}.{namespace}.{zone}"


#: The cluster domain of every project zone (Kubernetes' default).
CLUSTER_DOMAIN = "cluster.local"


def zone(namespace: str) -> str:
    """A project's DNS zone: ``<namespace>.svc.cluster.local``, as Kubernetes names services."""
    return f"{namespace}.svc.{CLUSTER_DOMAIN}"


def service_fqdn(namespace: str, service: str) -> str:
    """A LoadBalancer service's name (its endpoints): ``<svc>.<namespace>.svc.cluster.local``."""
    return f"{service}.{zone(namespace)}"


def service_ext_fqdn(namespace: str, service: str) -> str:
    """Its external name (the EIP it is reachable on), Kube-DC's ``<svc>-ext`` service."""
    return f"{service}-ext.{zone(namespace)}"


def service_eip_name(project_key: str, service: str) -> str:
    """``slb-<service>-<5 chars>``, Kube-DC's name for a LoadBalancer service's own EIP (stable
    suffix). IPAM allocates it; NAT's Kube-OVN backend recognises it by this name."""
    digest = hashlib.sha256(f"{project_key}/svc/{service}".encode()).hexdigest()
    return f"slb-{service}-{digest[:5]}"


def fip_eip_name(project_key: str, fip: str) -> str:
    """The name of a FIP's own EIP, ``fip-<fip>-<5 chars>`` as Kube-DC names it; the suffix
    is derived from the project and FIP (stable across replicas and restarts), not random."""
    digest = hashlib.sha256(f"{project_key}/{fip}".encode()).hexdigest()
    return f"fip-{fip}-{digest[:5]}"
